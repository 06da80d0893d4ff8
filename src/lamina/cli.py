"""`lamina`: one command line for every stage. Each subcommand parses its flags and calls a
function of the stage it belongs to; a `LaminaError` ends in one clear line, not a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import LaminaError


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    p.add_argument("--temperature", type=float, default=0.7, help="0 is greedy and deterministic (default 0.7)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help=">1 discourages repeats")
    p.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    p.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (slow start, fast decode)")


def _sampling(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)


def _load(args):
    from .serve import load
    return load(args.model, dtype=args.dtype, compile=args.compile)


def cmd_generate(args) -> None:
    llm = _load(args)
    prompt = args.prompt
    if args.chat:
        prompt = ([{"role": "system", "content": args.system}] if args.system else []) + \
                 [{"role": "user", "content": args.prompt}]
    else:
        sys.stdout.write(prompt)
    for piece in llm.stream(prompt, chat=args.chat, **_sampling(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def cmd_chat(args) -> None:
    llm = _load(args)
    if not llm.tokenizer.chat_template:
        raise LaminaError(f"{args.model}: this model has no chat template; use `lamina generate`")
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    print("lamina chat: /reset clears the conversation, /exit or Ctrl-D leaves.", file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print(file=sys.stderr)
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            history = []
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        sys.stdout.write("assistant> ")
        reply = []
        for piece in llm.stream(system + history, **_sampling(args)):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})


def cmd_convert(args) -> None:
    import torch

    from .checkpoint import load_checkpoint, write_gguf, write_hf, write_meta
    from .serve.llm import parse_dtype
    ck = load_checkpoint(args.src)
    made_by = {"command": "lamina convert", "source": str(ck.path), "source_format": ck.format}
    if args.to == "hf":
        dtype = parse_dtype(args.dtype) if args.dtype else None
        out = write_hf(args.dst, ck.config, ck.weights, ck.tokenizer, dtype=dtype, made_by=made_by)
    elif args.to == "gguf":
        out = write_gguf(args.dst, ck.config, ck.weights, ck.tokenizer, dtype=args.dtype or "f16",
                         name=Path(str(ck.path)).stem)
    else:
        dtype = parse_dtype(args.dtype) if args.dtype else torch.bfloat16
        out = write_meta(args.dst, ck.config, ck.weights, shards=args.shards, dtype=dtype)
    print(f"wrote {out} ({args.to})")


def model_info(ref: str) -> dict:
    from .checkpoint import load_checkpoint
    from .checkpoint.files import sha256
    from .model import count_params
    ck = load_checkpoint(ref)
    files = [ck.path] if ck.path.is_file() else sorted(f for f in ck.path.iterdir() if f.is_file())
    return {
        "path": str(ck.path), "format": ck.format, "architecture": "llama",
        "parameters": count_params(ck.config), "config": ck.config.to_dict(),
        "stored_dtypes": ck.dtypes,
        "tokenizer": None if ck.tokenizer is None else {
            "vocab_size": ck.tokenizer.vocab_size, "bos": ck.tokenizer.bos_token,
            "eos": ck.tokenizer.eos_token, "chat_template": bool(ck.tokenizer.chat_template)},
        "files": {f.name: {"bytes": f.stat().st_size, "sha256": sha256(f)} for f in files},
    }


def cmd_info(args) -> None:
    info = model_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"{info['path']} ({info['format']})", show_header=False)
    table.add_row("parameters", f"{info['parameters']:,}")
    for k, v in info["config"].items():
        table.add_row(k, str(v))
    table.add_row("stored dtypes", ", ".join(f"{k}×{n}" for k, n in info["stored_dtypes"].items()))
    if info["tokenizer"]:
        table.add_row("tokenizer", ", ".join(f"{k}={v}" for k, v in info["tokenizer"].items()))
    for name, f in info["files"].items():
        table.add_row(name, f"{f['bytes']:,} bytes  sha256 {f['sha256']}")
    Console().print(table)


def cmd_tokenizer_train(args) -> None:
    import time

    from .tokenizer.train import TokenizerTrainConfig, train_tokenizer
    config = TokenizerTrainConfig(inputs=tuple(args.input), vocab_size=args.vocab_size, out=args.out,
                         special_slots=args.special_slots, min_frequency=args.min_frequency,
                         text_field=args.text_field, progress=not args.quiet)
    start = time.perf_counter()
    tok = train_tokenizer(config)
    print(f"wrote {args.out}: {tok.vocab_size} tokens ({len(tok.ranks.ranks)} BPE, "
          f"{len(tok.special_tokens)} special) in {time.perf_counter() - start:.1f} s")


def cmd_tokenizer_encode(args) -> None:
    from .tokenizer import load_tokenizer
    tok = load_tokenizer(args.tokenizer)
    ids = tok.encode(args.text, bos=args.bos, allowed_special="all" if args.special else ())
    print(json.dumps(ids))


def cmd_data_build(args) -> None:
    import time

    from .data import build_corpus, recipe
    from dataclasses import replace
    r = recipe(args.recipe)
    out = Path(args.out or f"data/{r.name}")
    config = replace(r.config, workers=args.workers, **({} if args.seed is None else {"seed": args.seed}))
    start = time.perf_counter()
    build = build_corpus(r.load_sources(), out=out, policy=r.policy, config=config, recipe=r.name,
                         progress=not args.quiet)
    build.ledger.close()
    print(f"wrote {out}: {build.stats['tokens']:,} tokens from {build.stats['kept']:,} of "
          f"{build.stats['documents']:,} documents in {time.perf_counter() - start:.1f} s; "
          f"see `lamina data report --data {out}`")


def cmd_data_report(args) -> None:
    from .data import report
    from .data.report import chart
    summary = report(args.data)
    png = chart(summary, Path(args.data) / "mix.png") if not args.no_chart else None
    summary["chart"] = str(png) if png else None
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    console = Console()
    for title, rows in (("by source", summary["by_source"]), ("by license", summary["by_license"])):
        table = Table(title=f"{summary['tokens']:,} tokens {title}")
        for col in ("", "documents", "bytes", "tokens"):
            table.add_column(col, justify="left" if not col else "right")
        for k, v in rows.items():
            table.add_row(k, f"{v['documents']:,}", f"{v['bytes']:,}", f"{v['tokens']:,}")
        console.print(table)
    table = Table(title="kept out")
    for col in ("source", "status", "documents", "reason"):
        table.add_column(col)
    for r in summary["rejected"]:
        table.add_row(r["source"], r["status"], f"{r['documents']:,}", r["reason"])
    console.print(table)
    if summary["scrubbed"]:
        console.print("scrubbed: " + ", ".join(f"{n:,} {k}" for k, n in summary["scrubbed"].items()))
    if png:
        console.print(f"chart: {png}")


def cmd_data_trace(args) -> None:
    from .data import trace
    t = trace(args.data, args.shard, args.offset)
    if args.json:
        print(json.dumps(t, indent=2))
        return
    doc, src = t["document"], t["source"]
    print(f"{t['shard']}[{t['offset']}] = token {t['token']}{' (BOS)' if t['is_bos'] else ''}, "
          f"tokens {t['range'][0]}..{t['range'][1]} of document {doc['id']}")
    print(f"document {doc['id']}: {doc['path']} (sha256 {doc['content_hash']})")
    print(f"source {src['id']}: {src['origin']}; license {src['license']}; {src['attribution']}")


def cmd_data_why(args) -> None:
    from .data import why, why_source
    source = None if args.ref.isdigit() else why_source(args.data, args.ref)
    if source is not None:
        if args.json:
            print(json.dumps(source, indent=2))
            return
        src, counts = source["source"], source["documents"]
        decision = "allowed" if src["allowed"] else "kept out"
        print(f"source {src['id']}: {src['origin']}; license {src['license']} (from {src['license_from']}); "
              f"policy: {decision}, {src['reason']}")
        print(f"documents: {', '.join(f'{n:,} {k}' for k, n in counts.items()) or 'none'}; "
              f"{source['tokens']:,} tokens in the corpus")
        for r in source["kept_out"]:
            print(f"  {r['documents']:>6,} {r['status']} by {r['rule']} (e.g. document {r['example']['id']} "
                  f"{r['example']['path']})")
            for reason in r["reasons"]:
                print(f"         {reason['documents']:>6,}  {reason['reason']}")
        return
    docs = why(args.data, args.ref)
    if args.json:
        print(json.dumps(docs, indent=2))
        return
    for d in docs:
        verdict = f"in the corpus ({d['split']}, {d['tokens']:,} tokens)" if d["in_corpus"] else \
            f"kept out ({d['status']}): {d['reason']}"
        print(f"document {d['id']} {d['source_id']}:{d['path']}: {verdict}")
        for v in d["verdicts"]:
            print(f"  {'pass' if v['passed'] else 'FAIL'} {v['filter']}: {v['reason']}")


def cmd_train(args) -> None:
    from .train import load_recipe, train
    from .train.loop import default_threads
    default_threads()
    config = load_recipe(args.recipe, args.overrides, data=args.data, out=args.out, max_steps=args.max_steps)
    train(config, resume=args.resume, progress=not args.quiet)


def cmd_speedrun(args) -> None:
    from .train.speedrun import SpeedrunConfig, speedrun
    report = speedrun(SpeedrunConfig(out=args.out, recipe=args.recipe, overrides=tuple(args.overrides),
                                     progress=not args.quiet))
    print(f"report: {report}")


def cmd_eval(args) -> None:
    from .eval import EvalConfig, evaluate, load_model, render
    config = EvalConfig(tasks=tuple(args.tasks or ()), limit=args.limit, num_fewshot=args.num_fewshot,
                        batch_size=args.batch_size, max_tokens=args.max_tokens,
                        decontaminate=args.decontaminate, ngram=args.ngram,
                        perplexity=tuple(args.perplexity or ()), window=args.window,
                        progress=not args.quiet)
    from .eval.tasks import resolve_tasks
    for task in resolve_tasks(list(config.tasks)) if config.tasks else []:
        task.items(limit=1, num_fewshot=config.num_fewshot)     # bad names, shots, missing data: fail now
    runs = [evaluate(load_model(m, dtype=args.dtype), config, model_name=m) for m in args.model]
    if args.out:
        from .eval.harness import write_json
        write_json(args.out, runs[0] if len(runs) == 1 else runs)
    if args.json:
        print(json.dumps(runs[0] if len(runs) == 1 else runs, indent=2))
    else:
        render(runs)


def cmd_serve(args) -> None:
    import torch

    from .serve import BatcherConfig, load
    from .serve.api import ServeConfig, listen, run
    api_key = args.api_key or os.environ.get("LAMINA_API_KEY") or None
    if args.threads is not None:
        if args.threads < 1:
            raise LaminaError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    engine = BatcherConfig(max_slots=args.max_concurrency, max_len=args.max_len,
                           kv_cache_mb=args.kv_cache_mb, max_queue=args.max_queue, compile=args.compile)
    config = ServeConfig(host=args.host, port=args.port, api_key=api_key,
                         model_name=args.served_model_name or args.model,
                         max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens,
                         request_timeout_s=args.timeout, engine=engine)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"lamina: warning: serving on {args.host} without an API key: anyone who can reach "
              "this port can use the model (set --api-key or LAMINA_API_KEY)", file=sys.stderr)
    sock = listen(config.host, config.port)   # a port in use fails before the model loads
    run(load(args.model, dtype=args.dtype), config, sock)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lamina", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_help = "model directory, GGUF file, Meta checkpoint folder, or packaged name (smollm2-135m-instruct)"

    p = sub.add_parser("generate", help="stream a continuation of a prompt")
    p.add_argument("model", help=model_help)
    p.add_argument("prompt")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    _sampling_flags(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="a terminal chat with history, streaming replies")
    p.add_argument("model", help=model_help)
    p.add_argument("--system", default=None, help="system message")
    _sampling_flags(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("convert", help="convert a checkpoint to another format")
    p.add_argument("src", help=model_help)
    p.add_argument("dst", help="output directory (hf, meta) or file (gguf); must not exist")
    p.add_argument("--to", choices=["hf", "gguf", "meta"], required=True)
    p.add_argument("--dtype", default=None,
                   help="hf/meta: float32, bfloat16, float16 (hf default: as stored); gguf: f32, f16 (default), q8_0")
    p.add_argument("--shards", type=int, default=1, help="meta: model-parallel shards")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="architecture, parameter count, dtypes and file hashes")
    p.add_argument("model", help=model_help)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("tokenizer", help="train a tokenizer, or encode text with one")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="COMMAND")
    t = tsub.add_parser("train", help="train a byte-level BPE tokenizer (Llama 3 pattern and special tokens)")
    t.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="text files, .jsonl files (one JSON object per line), directories of them, or corpora "
                   "built by `lamina data build` (their training documents)")
    t.add_argument("--vocab-size", type=int, required=True,
                   help="all tokens: 256 bytes + learned merges + special-token slots")
    t.add_argument("--out", required=True, help="directory to create: tokenizer.model (tiktoken ranks), "
                   "tokenizer.json, tokenizer_config.json")
    t.add_argument("--special-slots", type=int, default=256,
                   help="special tokens after the BPE vocabulary, named ones then reserved (default 256, as Llama 3)")
    t.add_argument("--min-frequency", type=int, default=2, help="merge only pairs seen this often (default 2)")
    t.add_argument("--text-field", default="text", help="the field holding the text in .jsonl records")
    t.add_argument("--quiet", action="store_true", help="no progress display")
    t.set_defaults(func=cmd_tokenizer_train)
    t = tsub.add_parser("encode", help="print the token ids of a text")
    t.add_argument("tokenizer", help="tokenizer file (tiktoken ranks, SentencePiece .model, tokenizer.json, "
                   "GGUF), model directory, or packaged name (llama-3, mistral-v1, mistral-v3, smollm2-135m-instruct)")
    t.add_argument("text")
    t.add_argument("--special", action="store_true", help="read special-token text as control tokens")
    t.add_argument("--bos", action="store_true", default=None, help="prepend BOS (default: as the tokenizer does)")
    t.set_defaults(func=cmd_tokenizer_encode)

    p = sub.add_parser("data", help="build a license-clean corpus and ask its ledger questions")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    d = dsub.add_parser("build", help="sources → policy → clean, filter, dedup → token shards + ledger")
    d.add_argument("recipe", help="a built-in recipe (clean-small) or a recipe .toml file (sources, folders, config, policy)")
    d.add_argument("--out", default=None, help="directory to create (default data/RECIPE); must not exist")
    d.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes for the per-document filters (default: every core); the result does not depend on it")
    d.add_argument("--seed", type=int, default=None, help="split, mixing and order seed (default: the recipe's)")
    d.add_argument("--quiet", action="store_true", help="no progress display")
    d.set_defaults(func=cmd_data_build)
    data_help = "a corpus directory made by `lamina data build`"
    d = dsub.add_parser("report", help="tokens, documents and bytes by source and license; what was kept out and why")
    d.add_argument("--data", required=True, help=data_help)
    d.add_argument("--json", action="store_true")
    d.add_argument("--no-chart", action="store_true", help="do not write DATA/mix.png")
    d.set_defaults(func=cmd_data_report)
    d = dsub.add_parser("trace", help="the document, source and license of one training token")
    d.add_argument("shard", help="shard file name, e.g. train-00000.bin")
    d.add_argument("offset", type=int, help="token position in the shard")
    d.add_argument("--data", required=True, help=data_help)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_data_trace)
    d = dsub.add_parser("why", help="whether a document made it in and if not which rule stopped it; "
                                    "or, for a source, what was kept out of it and why")
    d.add_argument("ref", metavar="DOC_OR_SOURCE", help="document id, sha256, a file on disk, a recorded path, "
                                                        "or a source id (py:certifi, shakespeare, ...)")
    d.add_argument("--data", required=True, help=data_help)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_data_why)

    p = sub.add_parser("train", help="pretrain a model on token shards (resumable; torchrun for several processes)")
    p.add_argument("recipe", help="a recipe in recipes/ by name (debug, speedrun, ...) or a .toml file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe settings to change, values in TOML (lr=3e-4 optimizer=\"muon\" model_overrides.dim=128)")
    p.add_argument("--data", default=None, help="a corpus directory made by `lamina data build`")
    p.add_argument("--out", default=None, help="run directory (checkpoints/, metrics.jsonl, loss.png)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides the recipe)")
    p.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("speedrun", help="the main job: corpus → tokenizer → pretraining → validation, samples, report")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training recipe settings to change")
    p.add_argument("--out", default="runs/speedrun", help="run directory to create (default runs/speedrun)")
    p.add_argument("--recipe", default="speedrun", help="training recipe (default speedrun)")
    p.add_argument("--quiet", action="store_true", help="no progress displays")
    p.set_defaults(func=cmd_speedrun)
    p = sub.add_parser("eval", help="benchmarks (the LLaMA paper's suite, MMLU, GSM8K, LAMBADA), perplexity, contamination")
    p.add_argument("model", nargs="+", help=model_help + "; several give one table, a row each")
    p.add_argument("--tasks", nargs="+", metavar="TASK",
                   help="boolq piqa siqa hellaswag winogrande arc_easy arc_challenge openbookqa mmlu gsm8k lambada, "
                        "or the group llama-zero-shot (the first eight); commas work too")
    p.add_argument("--limit", type=int, default=None, help="the first N items of each task (of each MMLU subject)")
    p.add_argument("--num-fewshot", type=int, default=None, help="solved examples in the prompt (default: MMLU 5, GSM8K 8, others 0)")
    p.add_argument("--batch-size", type=int, default=32, help="items per forward pass (default 32)")
    p.add_argument("--max-tokens", type=int, default=4096, help="tokens per forward pass, which bounds memory (default 4096)")
    p.add_argument("--decontaminate", metavar="DATA", default=None,
                   help="a corpus directory (`lamina data build`) the model trained on: report the share of items "
                        "that share an n-gram with its training documents, and the score on the rest")
    p.add_argument("--ngram", type=int, default=13, help="words in a shared run that counts as seen (default 13)")
    p.add_argument("--perplexity", nargs="+", metavar="PATH", default=None,
                   help="perplexity and bits per byte on text files or corpus directories (validation split)")
    p.add_argument("--window", type=int, default=2048, help="tokens per perplexity window (default 2048)")
    p.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16")
    p.add_argument("--json", action="store_true", help="print lm-eval-shaped JSON instead of the table")
    p.add_argument("--out", default=None, help="also write the JSON results to this file")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("serve", help="an OpenAI-compatible API server with continuous batching and a web chat page")
    p.add_argument("model", help=model_help)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health (default: $LAMINA_API_KEY)")
    p.add_argument("--served-model-name", default=None, help="the model name clients send (default: MODEL as given)")
    p.add_argument("--max-concurrency", type=int, default=8,
                   help="requests decoded together, one KV-cache slot each (default 8)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for a slot; beyond it the server answers 429 (default 64)")
    p.add_argument("--max-len", type=int, default=None,
                   help="tokens per request, prompt + reply (default: the model's context, within --kv-cache-mb)")
    p.add_argument("--kv-cache-mb", type=float, default=1024, help="KV-cache memory budget for all slots (default 1024)")
    p.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt accepted (default: what fits)")
    p.add_argument("--max-tokens", type=int, default=None, help="largest max_tokens accepted (default: what fits)")
    p.add_argument("--timeout", type=float, default=600, help="seconds before a request is ended (default 600)")
    p.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (slow start, fast decode)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (`lamina train debug --data D lr=1e-3`)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.func(args)
    except LaminaError as e:
        print(f"lamina: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
