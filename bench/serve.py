"""Serving throughput and latency on SmolLM2-135M: `lamina serve` against llama.cpp's server
(`python -m llama_cpp.server`, llama-cpp-python), side by side in one run, as shared/BENCHMARKS.md asks.

    .venv/bin/python -m bench.serve [--concurrency 1,4,8] [--runs 3] [--threads 2]

Both servers run at the same time on this machine (an idle server uses no CPU) with the same
weights in fp32 (lamina serves the packaged model dequantized to fp32; llama.cpp an F32 GGUF of
the very same tensors, written by lamina's GGUF writer), the same thread count, and greedy
decoding. The load client is the official `openai` SDK (async): at each concurrency C, C clients
each send `--requests-per-client` streamed completion requests back to back, every request a
different prompt (`--prompt-tokens` of English text, distinct from the first token, so neither
server can reuse a cached prefix) asking for `--max-tokens` tokens. Metrics per (system, C):
aggregate generated tokens/s (all tokens / wall time from the first request to the last answer;
tokens counted by re-tokenizing each reply with the model's tokenizer, the same rule for both),
and time to first token (TTFT: request sent to first text received) p50 and p95. Systems
alternate within each round (lamina, llama.cpp, lamina, ...), one warm-up round is dropped, the
table shows medians over rounds. Rows go to bench/results/serve.json.

Note: llama-cpp-python's server evaluates one request at a time (it has no parallel slots), so
its aggregate barely grows with C; that is the peer the issue names and what users of it get."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.decode import OtherLoad, machine, print_table  # noqa: E402
from lamina.checkpoint import load_checkpoint, write_gguf  # noqa: E402

MODEL = "smollm2-135m-instruct"
RESULTS = Path(__file__).parent / "results" / "serve.json"
# Sixteen different openings, so no two prompts share a first token's worth of prefix.
OPENERS = [
    "Honey bees communicate the location of flowers through a waggle dance.",
    "The Danube flows through ten countries before reaching the Black Sea.",
    "Granite forms when magma cools slowly deep beneath the surface of the earth.",
    "Lighthouses once relied on whale oil before kerosene and electricity arrived.",
    "Octopuses have three hearts and blue blood rich in copper.",
    "Medieval monasteries copied manuscripts by hand in quiet scriptoria.",
    "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.",
    "Jupiter's Great Red Spot is a storm larger than the whole Earth.",
    "Violins are usually carved from spruce and maple that has dried for years.",
    "Penguins in Antarctica huddle together to survive the winter wind.",
    "Early railways in Britain used horses to pull wagons along wooden rails.",
    "Coral reefs grow only a few millimetres each year in warm shallow seas.",
    "Chess players in the nineteenth century often met in busy coffee houses.",
    "Volcanic soil around Naples made the region famous for its tomatoes.",
    "Paper was invented in China and reached Europe through the Islamic world.",
    "Arctic terns migrate farther each year than any other known bird.",
]
TEXT = ("Llamas are social animals and live with others as a herd. Their wool is soft and contains "
        "only a small amount of lanolin. Llamas can learn simple tasks after a few repetitions. "
        "When using a pack, they can carry about 25 to 30% of their body weight for 8 to 13 km. "
        "The name llama was adopted by European settlers from native Peruvians. ")


def prompts(tokenizer, n: int, length: int) -> list[str]:
    """n prompts of about `length` tokens, each opening differently."""
    out = []
    for i in range(n):
        text = OPENERS[i % len(OPENERS)] + f" (note {i}) "
        while len(tokenizer.encode(text)) < length:
            text += TEXT
        ids = tokenizer.encode(text)[:length]
        out.append(tokenizer.decode(ids))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on a free localhost port, stopped with Ctrl-C."""

    def __init__(self, name: str, argv: list[str], port: int, model: str, log: Path,
                 extra: dict | None = None):
        self.name, self.model, self.url = name, model, f"http://127.0.0.1:{port}"
        self.extra = extra or {}   # request fields only this server knows
        self.log = log.open("w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, health: str, timeout: float) -> None:
        import httpx2
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited; see {self.log.name}")
            try:
                if httpx2.get(self.url + health, timeout=5).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name} did not start in {timeout:.0f} s; see {self.log.name}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@dataclass
class Level:
    """One system at one concurrency in one round."""
    ttft: list[float] = field(default_factory=list)
    tokens: int = 0
    wall: float = 0.0
    texts: dict[int, str] = field(default_factory=dict)
    unfinished: int = 0     # streams that ended without a finish_reason (cut short)


async def run_level(server: Server, texts: list[str], concurrency: int, per_client: int,
                    max_tokens: int, tokenizer) -> Level:
    import openai
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="bench", max_retries=0, timeout=600)
    level = Level()

    async def one(i: int) -> None:
        start = time.perf_counter()
        first, pieces, finish = None, [], None
        stream = await client.completions.create(model=server.model, prompt=texts[i], max_tokens=max_tokens,
                                                 temperature=0, stream=True, extra_body=server.extra)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                first = first or time.perf_counter()
                pieces.append(chunk.choices[0].text)
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        level.ttft.append((first or time.perf_counter()) - start)
        level.texts[i] = "".join(pieces)
        level.tokens += len(tokenizer.encode(level.texts[i]))
        level.unfinished += finish is None

    async def worker(w: int) -> None:
        for k in range(per_client):
            await one(w * per_client + k)

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    level.wall = time.perf_counter() - start
    await client.close()
    return level


class LoadBesides(OtherLoad):
    """The CPU share of processes other than this one and the servers under test."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        super().__init__()

    def _ticks(self):
        ticks = OtherLoad._ticks()
        if ticks is None:
            return None
        servers = 0
        for pid in self.pids:
            try:   # utime and stime, fields 14 and 15 of /proc/PID/stat (after the command name)
                servers += sum(int(x) for x in open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[11:13])
            except OSError:
                pass
        busy, own, now = ticks
        return busy, own + servers, now


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def table(results: dict[tuple[str, int], list[Level]], peer: str) -> list[dict]:
    metrics = {"aggregate tok/s": lambda lv: lv.tokens / lv.wall,
               "TTFT p50 ms": lambda lv: 1000 * percentile(lv.ttft, 50),
               "TTFT p95 ms": lambda lv: 1000 * percentile(lv.ttft, 95)}
    rows = []
    for (system, c), levels in results.items():
        for metric, f in metrics.items():
            values = [f(lv) for lv in levels]
            base = statistics.median(f(lv) for lv in results[(peer, c)])
            median = statistics.median(values)
            rows.append({"system": system, "setting": f"concurrency {c}", "metric": metric,
                         "median": round(median, 2), "ratio_vs_peer": round(median / base, 2),
                         "runs": [round(v, 2) for v in values]})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,4,8", help="comma-separated client counts")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=128, help="tokens asked for per request")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3, help="recorded rounds after one warm-up round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slots", type=int, default=8, help="lamina --max-concurrency")
    p.add_argument("--no-compile", action="store_true", help="serve lamina eagerly (no torch.compile)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        raise SystemExit("llama_cpp is not installed (pip install -r requirements/bench.txt)") from None

    ck = load_checkpoint(MODEL)
    tok = ck.tokenizer
    n = max(levels) * args.requests_per_client
    texts = prompts(tok, n, args.prompt_tokens)
    context = args.prompt_tokens + args.max_tokens + 16
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        f32 = work / "smollm2-f32.gguf"
        write_gguf(f32, ck.config, ck.weights, ck.tokenizer, dtype="f32")
        del ck
        env_threads = str(args.threads)
        lamina_port, llama_port = free_port(), free_port()
        lamina_argv = [sys.executable, "-m", "lamina.cli", "serve", MODEL, "--port", str(lamina_port),
                       "--dtype", "float32", "--threads", env_threads, "--max-concurrency", str(args.slots),
                       "--max-len", str(-(-context // 256) * 256), "--served-model-name", MODEL]
        if not args.no_compile:
            lamina_argv.append("--compile")
        llama_argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(f32), "--port", str(llama_port),
                      "--model_alias", MODEL, "--n_threads", env_threads, "--n_threads_batch", env_threads,
                      "--n_ctx", str(context), "--n_batch", "512", "--verbose", "False",
                      # by default it cuts a running stream short when another request arrives
                      "--interrupt_requests", "False"]
        print("starting the servers (lamina compiles its decode step first)", flush=True)
        servers = [Server("lamina", lamina_argv, lamina_port, MODEL, work / "lamina.log"),
                   # llama-cpp-python's server applies a 1.1 repeat penalty unless told not to
                   Server("llama.cpp", llama_argv, llama_port, MODEL, work / "llama.log",
                          extra={"repeat_penalty": 1.0})]
        try:
            started = time.perf_counter()
            for s in servers:
                s.wait("/health" if s.name == "lamina" else "/v1/models", timeout=1800)
            print(f"servers up in {time.perf_counter() - started:.0f} s", flush=True)
            results, info = bench(servers, texts, levels, args, tok)
        except BaseException:
            for s in servers:
                s.stop()
                print(f"--- {s.name} log ---\n" + Path(s.log.name).read_text()[-3000:])
            raise
        for s in servers:
            s.stop()
    rows = table(results, "llama.cpp")
    print()
    print_table(rows)
    print("ratio vs peer = lamina / llama.cpp at the same concurrency (higher is better for tok/s, "
          "lower for TTFT)")
    shares = [o for o in info["other_processes_cpu_share"] if o is not None]
    if shares and max(shares) > 0.1:
        print(f"WARNING: other processes used up to {max(shares):.0%} of the CPUs during the runs; "
              "these numbers are not reliable, rerun on an idle machine")
    print(f"greedy replies identical between the two servers: {info['identical_replies']}; "
          f"replies cut short (no finish_reason): {info['replies_cut_short']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    info["env"] = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    record = {"benchmark": "serve", "model": MODEL, "machine": machine(args.threads),
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "settings": info, "rows": rows}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


def bench(servers: list[Server], texts: list[str], levels: list[int], args, tok):
    results: dict[tuple[str, int], list[Level]] = {(s.name, c): [] for c in levels for s in servers}
    load, others = LoadBesides([s.proc.pid for s in servers]), []
    same, compared, unfinished = 0, 0, {s.name: 0 for s in servers}
    for run in range(args.runs + 1):
        for c in levels:
            got = {}
            for s in servers:
                got[s.name] = asyncio.run(run_level(s, texts, c, args.requests_per_client, args.max_tokens, tok))
                if run:
                    results[(s.name, c)].append(got[s.name])
            for name, lv in got.items():
                unfinished[name] += lv.unfinished
            a, b = (got[s.name].texts for s in servers)
            same += sum(a[i] == b[i] for i in a)
            compared += len(a)
            print(f"{'warm-up' if not run else f'run {run}/{args.runs}'} concurrency {c}: " + ", ".join(
                f"{name} {lv.tokens / lv.wall:.1f} tok/s, TTFT p50 {1000 * percentile(lv.ttft, 50):.0f} ms"
                for name, lv in got.items()), flush=True)
        others.append(load.share())
    info = {"other_processes_cpu_share": [None if o is None else round(o, 3) for o in others],
            "identical_replies": f"{same} of {compared}",
            "replies_cut_short": unfinished,
            "requests_per_level": {c: c * args.requests_per_client for c in levels}}
    return results, info


if __name__ == "__main__":
    main()
