"""Batch-1 greedy generation speed on SmolLM2-135M: lamina against transformers `generate` (and
llama.cpp), side by side in one run, as shared/BENCHMARKS.md asks.

    .venv/bin/python -m bench.decode [--dtypes float32,bfloat16] [--runs 5] [--threads 2]
    .venv/bin/python -m bench.decode --dtypes int8,int4 --lamina compiled   # quantized, against llama.cpp

int8 and int4 write the weights as a Q8_0 and a Q4_0 GGUF (Q4_0 keeps the embedding and head in
Q8_0, as llama.cpp's quantizer does); lamina loads that file with `quantize=` (taking its codes
as they are) and llama.cpp runs the same file: the peer at those precisions is llama.cpp.

Every system generates `--new-tokens` tokens greedily after the same `--prompt-tokens`-token
prompt, with the same weights and thread count. One generate call gives both numbers:
prefill tok/s = prompt tokens / time to the first new token; decode tok/s = (new tokens - 1) /
time from the first new token to the last. Systems alternate within each round (A B C A B C ...),
one warm-up round is dropped, and the table shows medians. The same run measures memory read
bandwidth and matmul throughput, which give the ceilings: batch-1 decode reads every weight once
per token, prefill is bound by matmul FLOP/s. Rows go to bench/results/decode.json."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

import lamina  # noqa: E402
from lamina.checkpoint import load_checkpoint, resolve, write_gguf, write_hf  # noqa: E402
from lamina.serve import SamplingParams  # noqa: E402

MODEL = "smollm2-135m-instruct"
RESULTS = Path(__file__).parent / "results" / "decode.json"
SHORT = {"float32": "fp32", "bfloat16": "bf16", "int8": "q8_0", "int4": "q4_0"}
QUANTIZED = {"int8": "q8_0", "int4": "q4_0"}   # lamina's weight-only quantization -> the GGUF type it loads
# Natural text, so the greedy continuation is ordinary language rather than a degenerate loop.
TEXT = ("The llama is a domesticated South American camelid, widely used as a meat and pack "
        "animal by Andean cultures since the pre-Columbian era. Llamas are social animals and "
        "live with others as a herd. Their wool is soft and contains only a small amount of "
        "lanolin. Llamas can learn simple tasks after a few repetitions. When using a pack, "
        "they can carry about 25 to 30% of their body weight for 8 to 13 km. ")


@dataclass
class Timing:
    prefill_s: float
    decode_s: float
    tokens: list[int]


def time_stream(start: float, stamps: list[float], tokens: list[int]) -> Timing:
    """Split one generate call at its first new token: before it is prefill, after it decode."""
    return Timing(stamps[0] - start, stamps[-1] - stamps[0], tokens)


class Lamina:
    def __init__(self, dtype: str, compile: bool, model: str | Path = MODEL):
        t = time.perf_counter()
        if dtype in QUANTIZED:
            self.llm = lamina.load(model, dtype="float32", quantize=dtype, compile=compile)
        else:
            self.llm = lamina.load(model, dtype=dtype, compile=compile)
        self.load_s = time.perf_counter() - t

    def generate(self, prompt: list[int], n: int) -> Timing:
        params = SamplingParams(temperature=0, max_new_tokens=n, stop_token_ids=())
        stamps, tokens = [], []
        start = time.perf_counter()
        for (token,) in self.llm.engine.generate([prompt], params):
            stamps.append(time.perf_counter())
            tokens.append(token)
        return time_stream(start, stamps, tokens)


class Transformers:
    def __init__(self, dtype: str, hf_dir: Path):
        from transformers import LlamaForCausalLM
        self.model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=getattr(torch, dtype)).eval()

    def generate(self, prompt: list[int], n: int) -> Timing:
        from transformers.generation.streamers import BaseStreamer
        stamps: list[float] = []

        class Clock(BaseStreamer):   # generate calls put() with the prompt, then once per token
            def put(self, value):
                stamps.append(time.perf_counter())

            def end(self):
                pass

        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n,
                                      do_sample=False, streamer=Clock())
        return time_stream(start, stamps[1:], out[0, len(prompt):].tolist())


class LlamaCpp:
    def __init__(self, gguf_path: Path, threads: int, context: int):
        from llama_cpp import Llama
        self.llm = Llama(str(gguf_path), n_ctx=context, n_batch=context, n_threads=threads,
                         n_threads_batch=threads, verbose=False)

    def generate(self, prompt: list[int], n: int) -> Timing:
        self.llm.reset()   # no reuse of the previous run's cached prompt
        stamps, tokens = [], []
        start = time.perf_counter()
        for token in self.llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0):
            stamps.append(time.perf_counter())
            tokens.append(token)
            if len(tokens) == n:
                break
        return time_stream(start, stamps, tokens)


class OtherLoad:
    """The share of the machine's CPU time that other processes used since the last call: on a
    shared machine it says how far to trust a run (multi-threaded kernels slow down the most
    when another process takes a core). Linux only; None elsewhere."""

    def __init__(self):
        self.last = self._ticks()

    @staticmethod
    def _ticks() -> tuple[float, float, float] | None:
        try:
            fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        except OSError:
            return None
        busy = sum(fields) - fields[3] - fields[4]          # all but idle and iowait
        t = os.times()
        own = (t.user + t.system) * os.sysconf("SC_CLK_TCK")
        return busy, own, time.monotonic()

    def share(self) -> float | None:
        now, last = self._ticks(), self.last
        self.last = now
        if now is None or last is None or now[2] <= last[2]:
            return None
        capacity = (now[2] - last[2]) * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
        return max(0.0, (now[0] - last[0]) - (now[1] - last[1])) / capacity


def read_bandwidth(buffer: torch.Tensor, passes: int = 3) -> float:
    """Bytes/s of summing a tensor far larger than the caches: the best of a few passes, since a
    ceiling is what the machine can deliver (a first pass may still be paging the buffer in)."""
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - t)
    return buffer.nbytes / best


def matmul_flops(dtype: torch.dtype, n: int = 1024, passes: int = 3) -> float:
    """FLOP/s of an (n, n) x (n, n) F.linear, the call (and so the kernel) the models use; the
    best of a few passes."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.nn.functional.linear(a, b)
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        torch.nn.functional.linear(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def machine(threads: int) -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import transformers
    info = {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads": threads,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "lamina": lamina.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        import llama_cpp
        info["llama_cpp_python"] = llama_cpp.__version__
    except ImportError:
        pass
    return info


@dataclass
class Row:
    system: str
    setting: str
    runs: dict[str, list[float]] = field(default_factory=lambda: {"prefill tok/s": [], "decode tok/s": []})

    def add(self, t: Timing, prompt_tokens: int) -> None:
        self.runs["prefill tok/s"].append(prompt_tokens / t.prefill_s)
        self.runs["decode tok/s"].append((len(t.tokens) - 1) / t.decode_s)


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y),
                None if len(a) == len(b) else min(len(a), len(b)))


def load_systems(dtype: str, args, ck, work: Path, prompt: list[int]) -> tuple[list, list[Row], dict]:
    """Every system at one precision, in table order, and lamina's load and compile times."""
    setting = SHORT[dtype]
    systems, rows, info = [], [], {}
    source: str | Path = MODEL
    if dtype in QUANTIZED:
        source = work / f"smollm2-{QUANTIZED[dtype]}.gguf"
        write_gguf(source, ck.config, ck.weights, ck.tokenizer, dtype=QUANTIZED[dtype])
    for mode in args.lamina:
        ours = Lamina(dtype, compile=mode == "compiled", model=source)
        # The first call pays for compilation; the second shows the steady cost.
        t0 = time.perf_counter()
        ours.generate(prompt, args.new_tokens)
        t1 = time.perf_counter()
        ours.generate(prompt, args.new_tokens)
        t2 = time.perf_counter()
        info[f"lamina_{mode}"] = {"load_s": round(ours.load_s, 2),
                                  "first_call_extra_s": round((t1 - t0) - (t2 - t1), 1)}
        systems.append(ours)
        rows.append(Row(f"lamina {mode}" + (f" {dtype}" if dtype in QUANTIZED else ""), setting))
    if dtype in QUANTIZED:   # the peer: llama.cpp on the very file lamina loaded
        info["weight_bytes"] = read_bytes(ours.llm.engine.model)
        if args.llama_cpp:
            systems.append(LlamaCpp(source, args.threads, len(prompt) + args.new_tokens))
            rows.append(Row(f"llama.cpp {QUANTIZED[dtype].upper()} GGUF", setting))
        return systems, rows, info
    systems.append(Transformers(dtype, work / "hf"))
    rows.append(Row("transformers generate", setting))
    if args.llama_cpp and dtype == "float32":
        f32 = work / "smollm2-f32.gguf"
        write_gguf(f32, ck.config, ck.weights, ck.tokenizer, dtype="f32")
        context = len(prompt) + args.new_tokens
        systems += [LlamaCpp(f32, args.threads, context),
                    LlamaCpp(resolve(MODEL)[0], args.threads, context)]
        rows += [Row("llama.cpp F32 GGUF", setting),
                 Row("llama.cpp packaged Q4_1 GGUF", "q4_1")]
    return systems, rows, info


def read_bytes(model) -> int:
    """Bytes a quantized model's decode step reads: every weight and scale but the float
    embedding (of which it reads one row)."""
    from lamina.model.quant import quantized_bytes
    return quantized_bytes(model) - model.tok_embeddings.weight.nbytes


def ceiling(ck, dtype: str, bandwidth: list[float], flops: list[float],
            weight_bytes: int | None = None) -> tuple[Row, dict]:
    """Decode reads every weight once per token (the tied embedding once, as the output
    projection; the KV cache, a few MB, is left out). Prefill does 2 FLOPs per layer weight per
    token (the output projection runs for the last token only; attention scores are left out)."""
    n_params = sum(v.numel() for k, v in ck.weights.items()
                   if not (ck.config.tie_embeddings and k == "output.weight"))
    weight_bytes = weight_bytes or n_params * getattr(torch, dtype).itemsize
    layer_params = sum(v.numel() for k, v in ck.weights.items() if k.startswith("layers."))
    row = Row("ceiling", SHORT[dtype])
    row.runs = {"prefill tok/s": [f / (2 * layer_params) for f in flops],
                "decode tok/s": [b / weight_bytes for b in bandwidth]}
    return row, {"read_bandwidth_GBps": round(statistics.median(bandwidth) / 1e9, 1),
                 "matmul_GFLOPs": round(statistics.median(flops) / 1e9, 1),
                 "weight_bytes": weight_bytes}


def bench_dtype(dtype: str, args, ck, work: Path, prompt: list[int]) -> tuple[list[Row], dict]:
    """Load every system at one precision, then alternate them for `args.runs` rounds."""
    setting = SHORT[dtype]
    print(f"[{setting}] loading", flush=True)
    systems, rows, info = load_systems(dtype, args, ck, work, prompt)
    # Warm-up round, not recorded; it also gives the greedy tokens to compare with the first row.
    warm = [s.generate(prompt, args.new_tokens).tokens for s in systems]
    info["greedy_tokens_differ_from_first_row_at"] = {
        r.system: first_difference(warm[0], w) for r, w in zip(rows[1:], warm[1:])
        if r.setting == setting}

    buffer = torch.ones(args.bandwidth_mb << 18)   # float32, 4 bytes each
    bandwidth, flops, others = [], [], []
    load = OtherLoad()
    for run in range(args.runs):
        for system, row in zip(systems, rows):
            row.add(system.generate(prompt, args.new_tokens), len(prompt))
        bandwidth.append(read_bandwidth(buffer))
        flops.append(matmul_flops(torch.float32 if dtype in QUANTIZED else getattr(torch, dtype)))
        others.append(load.share())
        busy = "" if others[-1] is None else f" (other processes: {others[-1]:.0%} of the CPUs)"
        print(f"[{setting}] run {run + 1}/{args.runs} decode tok/s: " + ", ".join(
            f"{r.system} {r.runs['decode tok/s'][-1]:.1f}" for r in rows) + busy, flush=True)
    del buffer
    info["other_processes_cpu_share"] = [None if o is None else round(o, 3) for o in others]
    limit, limits = ceiling(ck, dtype, bandwidth, flops, info.get("weight_bytes"))
    info.update(limits)
    return rows + [limit], info


def table(rows: list[Row]) -> list[dict]:
    """Medians, with each row's ratio to the peer at the same setting and metric: transformers,
    or llama.cpp at the quantized settings (transformers has no GGUF-quantized path on CPU)."""
    peer = {(r.setting, m): statistics.median(v) for r in rows
            if r.system.startswith("transformers") or (r.setting in QUANTIZED.values() and r.system.startswith("llama.cpp"))
            for m, v in r.runs.items()}
    out = []
    for r in rows:
        for metric, values in r.runs.items():
            median = statistics.median(values)
            base = peer.get((r.setting, metric))
            out.append({"system": r.system, "setting": r.setting, "metric": metric,
                        "median": round(median, 2),
                        "ratio_vs_peer": round(median / base, 2) if base else None,
                        "runs": [round(v, 2) for v in values]})
    return out


def print_table(rows: list[dict]) -> None:
    head = ("system", "setting", "metric", "median", "ratio vs peer")
    cells = [[r["system"], r["setting"], r["metric"], f"{r['median']:.1f}",
              "n/a" if r["ratio_vs_peer"] is None else f"{r['ratio_vs_peer']:.2f}x"] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *cells)]
    for line in [head, ["-" * w for w in widths], *cells]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(line, widths)))


def prompt_tokens(tokenizer, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer.encode(TEXT)
    return ids[:n]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=5, help="recorded rounds after one warm-up round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lamina", default="compiled,eager",
                   help="lamina rows: compiled (lamina.load(..., compile=True)), eager, or both")
    p.add_argument("--llama-cpp", action=argparse.BooleanOptionalAction, default=True,
                   help="add llama.cpp rows (F32 GGUF of the same weights, and the packaged Q4_1)")
    p.add_argument("--bandwidth-mb", type=int, default=512, help="size of the read-bandwidth probe")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    args.lamina = [m.strip() for m in args.lamina.split(",")]
    if not args.lamina or set(args.lamina) - {"compiled", "eager"}:
        p.error("--lamina takes compiled, eager, or compiled,eager")
    if unknown := [d for d in dtypes if d not in SHORT]:
        p.error(f"unknown dtype {unknown[0]!r}; choose from {', '.join(SHORT)}")
    if args.llama_cpp:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("llama_cpp is not installed (pip install -r requirements/bench.txt); "
                  "running without the llama.cpp rows")
            args.llama_cpp = False

    torch.set_num_threads(args.threads)
    ck = load_checkpoint(MODEL)
    prompt = prompt_tokens(ck.tokenizer, args.prompt_tokens)
    rows, info = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # transformers reads the very weights lamina runs, written as an HF directory.
        write_hf(work / "hf", ck.config, ck.weights, ck.tokenizer)
        for dtype in dtypes:
            r, info[SHORT[dtype]] = bench_dtype(dtype, args, ck, work, prompt)
            rows += r
    results = table(rows)
    print()
    print_table(results)
    for setting, i in info.items():
        print(f"[{setting}] read bandwidth {i['read_bandwidth_GBps']} GB/s, matmul "
              f"{i['matmul_GFLOPs']} GFLOP/s, weights {i['weight_bytes'] / 1e6:.0f} MB")
        shares = [o for o in i["other_processes_cpu_share"] if o is not None]
        if shares and max(shares) > 0.1:
            print(f"[{setting}] WARNING: other processes used up to {max(shares):.0%} of the CPUs "
                  "during the runs; these numbers are not reliable, rerun on an idle machine")
        for mode in args.lamina:
            print(f"[{setting}] lamina {mode}: load {i[f'lamina_{mode}']['load_s']} s, first call "
                  f"+{i[f'lamina_{mode}']['first_call_extra_s']} s (compilation, warm-up)")
        print(f"[{setting}] greedy tokens differ from {rows[0].system} at (None = identical): "
              f"{i['greedy_tokens_differ_from_first_row_at']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "decode", "model": MODEL, "machine": machine(args.threads),
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "settings": info, "rows": results}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
