"""What quantization costs in quality: perplexity and bits per byte of SmolLM2-135M-Instruct on
the clean-small corpus's validation documents, at each precision, lamina beside llama.cpp on the
very same GGUF file, in one run (shared/BENCHMARKS.md).

    lamina data build clean-small --out CORPUS        # or the corpus a `lamina speedrun` built
    .venv/bin/python -m bench.quality CORPUS [--docs 40] [--tokens 512]

The validation documents' text is cut with SmolLM2's tokenizer, each to its first `--tokens`
tokens, and every token after the first is scored given the ones before it (one forward a
document). Rows: the float weights (the packaged Q4_1 file's, dequantized) in lamina and
llama.cpp (an F32 GGUF); Q8_0 (lamina `quantize="int8"`, the file's codes) and Q4_0 (`"int4"`)
files written from them, in both. Rows go to bench/results/quality.json."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import lamina  # noqa: E402
from lamina.checkpoint import load_checkpoint, write_gguf  # noqa: E402
from lamina.data.documents import corpus_documents  # noqa: E402

MODEL = "smollm2-135m-instruct"
RESULTS = Path(__file__).parent / "results" / "quality.json"


def nll_lamina(llm, docs: list[list[int]]) -> float:
    total = 0.0
    with torch.inference_mode():
        for ids in docs:
            logits = llm.engine.model(torch.tensor([ids]))[0, :-1].float()
            total += float(F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
    return total


def nll_llama_cpp(path: Path, docs: list[list[int]], context: int) -> float:
    import llama_cpp
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=context, logits_all=True, n_threads=2,
                          n_threads_batch=2, verbose=False)
    total = 0.0
    for ids in docs:
        llm.reset()
        llm.eval(ids)
        logits = torch.from_numpy(np.array(llm.scores[:len(ids) - 1], dtype=np.float32))
        total += float(F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("corpus")
    p.add_argument("--docs", type=int, default=40)
    p.add_argument("--tokens", type=int, default=512)
    args = p.parse_args()
    torch.set_num_threads(2)
    ck = load_checkpoint(MODEL)
    tok = ck.tokenizer
    docs = []
    for d in corpus_documents(args.corpus, "validation"):
        ids = tok.encode(d.text)[:args.tokens]
        if len(ids) >= 16:
            docs.append(ids)
        if len(docs) == args.docs:
            break
    scored = sum(len(d) - 1 for d in docs)
    n_bytes = sum(len(tok.decode(d[1:]).encode()) for d in docs)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, dtype in (("F32", "f32"), ("Q8_0", "q8_0"), ("Q4_0", "q4_0")):
            files[name] = Path(tmp) / f"smollm2-{dtype}.gguf"
            write_gguf(files[name], ck.config, ck.weights, tok, dtype=dtype)
        for name, quantize in (("F32", None), ("Q8_0", "int8"), ("Q4_0", "int4")):
            print(f"[{name}] scoring {len(docs)} documents, {scored} tokens", flush=True)
            llm = lamina.load(files[name], dtype="float32", quantize=quantize)
            for system, nll in ((f"lamina{' --quantize ' + quantize if quantize else ''}", nll_lamina(llm, docs)),
                                ("llama.cpp", nll_llama_cpp(files[name], docs, args.tokens))):
                rows.append({"file": name, "system": system, "perplexity": math.exp(nll / scored),
                             "bits_per_byte": nll / math.log(2) / n_bytes, "tokens": scored, "bytes": n_bytes})
                print(f"{name:5s} {system:26s} perplexity {rows[-1]['perplexity']:.3f}  "
                      f"bits/byte {rows[-1]['bits_per_byte']:.4f}", flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"benchmark": "quality", "model": MODEL, "corpus": str(args.corpus),
                                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                   "documents": len(docs), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
