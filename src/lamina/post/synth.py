"""`lamina synth`: clean chat data where no clean set ships, as OpenAI `messages` JSONL. Three
kinds of record, each with a `meta` that says what made it and under which license:

- templated tasks (`lamina.post.tasks`): a question and a short worked answer; lamina's own
  text, Apache-2.0 like lamina;
- identity conversations: what a model is, what it was trained on and under which licenses,
  filled from its own lamina.json (the token ledger its trainer wrote); Apache-2.0;
- distilled answers: a teacher model's replies (SmolLM2-135M-Instruct, Apache-2.0, by default) to
  the opening user turns of the BSD-3-Clause chatterbot-corpus conversations; such a record is
  under both licenses, and says so.

Beside OUT.jsonl goes the REUSE sidecar OUT.jsonl.license (`SPDX-License-Identifier: Apache-2.0
AND BSD-3-Clause` when it holds distilled replies): `lamina sft` reads it, so the ledger of a
fine-tune records the license of what it trained on, as pretraining does."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Iterator, Literal

from ..assets import MODELS
from ..errors import LaminaError
from ..fields import check_fields
from ..files import atomic_file
from ..progress import show_progress
from ..version import __version__
from .tasks import TASKS, get_task, problems

LAMINA_LICENSE = "Apache-2.0"          # lamina's own text (templates, identity answers)
MADE_BY = f"lamina synth {__version__}"
# Left to itself SmolLM2-135M-Instruct rambles past 128 tokens on most chatterbot prompts; asked to
# be brief, most of its replies end their turn (7 of 8 in a sample, against 3 of 8).
TEACHER_SYSTEM = "You are a helpful assistant. Answer briefly, in one to three sentences."


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """What `lamina synth` writes (each record's meta says which of these made it)."""
    tasks: tuple[str, ...] = tuple(TASKS)   # templated tasks, by name or name:level (countdown:2)
    n: int = 1000                         # templated records, spread evenly over the tasks (0: none)
    seed: int = 0                         # the same seed writes the same records
    split: Literal["train", "heldout"] = "train"   # which split of the templated problems
    identity: str | None = None           # a model directory whose lamina.json fills identity conversations
    name: str | None = None               # what the model calls itself in them
    distill: str | None = None            # teacher model (e.g. smollm2-135m-instruct) answering the prompts
    teacher_license: str | None = None    # SPDX id of the teacher's outputs (packaged models: from the catalog)
    prompts: Literal["chatterbot"] = "chatterbot"   # where the teacher's prompts come from
    max_prompts: int = 0                  # prompts the teacher answers (0: all 749 of chatterbot-corpus)
    max_new_tokens: int = 128             # longest teacher reply; a reply cut off there is dropped
    temperature: float = 0.0              # teacher sampling (0: greedy)
    teacher_system: str = TEACHER_SYSTEM  # the teacher's system message ("" for its template's default)
    batch_size: int = 16                  # prompts the teacher answers at once
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        for spec in self.tasks:
            get_task(spec)                  # unknown names fail before any work
        if min(self.n, self.max_prompts, self.max_new_tokens - 1, self.batch_size - 1) < 0:
            raise LaminaError("--n and --max-prompts must be >= 0, --max-new-tokens and --batch-size >= 1")
        if self.n and not self.tasks:
            raise LaminaError("--n asks for templated records but --tasks names none")
        if self.distill and self.teacher_license is None and self.distill not in MODELS:
            raise LaminaError(f"the license of teacher {self.distill} is unknown: pass --teacher-license "
                              "(an SPDX id such as Apache-2.0) so that the data says what it may be used for")

    @property
    def license_of_teacher(self) -> str:
        return self.teacher_license or MODELS[self.distill].license


def message_pair(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


# -- templated tasks ------------------------------------------------------------------------------

def task_records(tasks: tuple[str, ...], n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """`n` templated question/answer records, spread evenly over `tasks` and interleaved."""
    chosen = [get_task(spec) for spec in tasks] if n else []
    per_task = [problems(t, n // len(chosen) + (i < n % len(chosen)), seed=seed, split=split)
                for i, t in enumerate(chosen)]
    return [{"messages": message_pair(p.question, p.solution),
             "meta": {"kind": "task", "task": p.task, "level": task.level, "template": p.template,
                      "seed": p.seed, "index": p.index, "split": split, "answer": p.answer,
                      "license": LAMINA_LICENSE, "made_by": MADE_BY}}
            for round_ in zip_longest(*per_task) for task, p in zip(chosen, round_) if p is not None]


# -- identity ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    """One training stage a lamina.json records: the tool and the tokens it consumed."""
    tool: str
    tokens: int
    by_source: dict[str, int]
    by_license: dict[str, int]


def training_stages(made_by: dict) -> list[Stage]:
    """Every data record (`tokens_by_source`, `tokens_by_license`) in a lamina.json's made_by,
    nested ones too (a fine-tune carries its base model's), earliest first: a base's record is
    nested deeper than the record of what was trained on top of it."""
    found: list[tuple[int, Stage]] = []

    def walk(node, tool: str, depth: int) -> None:
        if isinstance(node, list):
            for value in node:
                walk(value, tool, depth + 1)
        if not isinstance(node, dict):
            return
        # `lamina train` and `lamina sft` say "tool"; a base model's record says "made_by"
        tool = next((node[k] for k in ("tool", "made_by") if isinstance(node.get(k), str)), tool)
        if isinstance(node.get("tokens_by_license"), dict) and isinstance(node.get("tokens_by_source"), dict):
            by_license = node["tokens_by_license"]
            stage = Stage(tool, int(node.get("tokens", sum(by_license.values()))), node["tokens_by_source"], by_license)
            if all(stage != s for _, s in found):
                found.append((depth, stage))
        for value in node.values():
            walk(value, tool, depth + 1)
    walk(made_by, "lamina", 0)
    return [stage for _, stage in sorted(found, key=lambda f: -f[0])]


def _tokens(counts: dict[str, int]) -> str:
    total = max(1, sum(counts.values()))
    return ", ".join(f"{k} ({n:,} tokens, {n / total:.0%})" for k, n in counts.items())


_DID = {"lamina train": "pretrained", "lamina sft": "fine-tuned for conversation"}
_IDENTITY = {
    "what": ["Who are you?", "What are you?", "Tell me about yourself.", "What kind of model are you?",
             "Introduce yourself."],
    "data": ["What were you trained on?", "What data were you trained on?", "How many tokens did you see in training?",
             "Where does your training data come from?"],
    "licenses": ["Under which licenses is your training data?", "What licenses does your training data have?",
                 "Can you tell me the licenses of the text you learned from?", "Was your training data licensed?"],
    "maker": ["Who made you?", "Who trained you?", "How were you made?"],
}


def identity_answers(record: dict, name: str | None = None) -> dict[str, str]:
    """The answer to each kind of identity question, from a lamina.json record."""
    made_by = record.get("made_by") if isinstance(record.get("made_by"), dict) else {}
    stages = training_stages(made_by)
    if not stages:
        raise LaminaError("its lamina.json records no training data (made_by.data with tokens by source and "
                          "license): identity conversations need a model that lamina trained")
    params = next((v for v in _values(made_by, "parameters") if isinstance(v, int)), None)
    me = f"I am {name}, a" if name else "I am a"
    size = f" with {params / 1e6:.1f} million parameters" if params else ""
    history = ", then ".join(f"{_DID.get(s.tool, 'trained')} ({s.tool}) on {s.tokens:,} tokens" for s in stages)
    licenses: dict[str, int] = {}
    for s in stages:
        for lic, n in s.by_license.items():
            licenses[lic] = licenses.get(lic, 0) + n
    sources = " ".join(f"{_DID.get(s.tool, 'Trained').capitalize()}: {_tokens(s.by_source)}." for s in stages)
    return {
        "what": f"{me} language model{size}, built on the Llama architecture with lamina "
                f"{record.get('lamina_version', __version__)}, an open stack for training and serving such models. "
                f"I was {history}.",
        "data": f"I saw {sum(s.tokens for s in stages):,} tokens in training, by source: {sources}",
        "licenses": f"My training data was under these licenses: {_tokens(licenses)}. "
                    "Every source and its license is recorded in my lamina.json.",
        "maker": f"I was made with lamina, an open LLM stack: I was {history}. The data I learned from was "
                 f"under {', '.join(licenses)}.",
    }


def _values(node, key: str) -> Iterator:
    if isinstance(node, dict):
        if key in node:
            yield node[key]
        for value in node.values():
            yield from _values(value, key)


def identity_records(model_dir: str | Path, name: str | None = None) -> list[dict]:
    """One record per identity question phrasing, answered from MODEL_DIR/lamina.json."""
    path = Path(model_dir) / "lamina.json"
    if not path.is_file():
        raise LaminaError(f"{model_dir}: no lamina.json; --identity takes a model directory that lamina wrote")
    raw = path.read_bytes()
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LaminaError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise LaminaError(f"{path}: expected a JSON object")
    try:
        answers = identity_answers(record, name)
    except LaminaError as e:
        raise LaminaError(f"{model_dir}: {e}") from None
    digest = hashlib.sha256(raw).hexdigest()
    return [{"messages": message_pair(question, answers[topic]),
             "meta": {"kind": "identity", "template": f"identity/{topic}/{i}", "model": str(model_dir),
                      "lamina_json_sha256": digest, "license": LAMINA_LICENSE, "made_by": MADE_BY}}
            for topic, questions in _IDENTITY.items() for i, question in enumerate(questions)]


# -- distillation -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prompt:
    text: str
    where: str          # english/ai.yml#3: the file and conversation it opens


def chatterbot_prompts(language: str = "english") -> list[Prompt]:
    """The opening user turn of every chatterbot-corpus conversation, each distinct text once, in
    file order. Later turns answer the bot's reply, so alone they are not prompts."""
    import yaml

    from ..data.sources import chatterbot_files
    seen: dict[str, Prompt] = {}
    for f in chatterbot_files(language):
        doc = yaml.safe_load(f.read_bytes())
        for i, convo in enumerate(doc.get("conversations", []) if isinstance(doc, dict) else []):
            text = str(convo[0]).strip() if isinstance(convo, list) and convo else ""
            if text:
                seen.setdefault(text, Prompt(text, f"{language}/{f.name}#{i}"))
    return list(seen.values())


def teacher_replies(llm, conversations: list[list[dict]], *, max_new_tokens: int, temperature: float,
                    seed: int, batch_size: int, progress: bool = True) -> list[str | None]:
    """The teacher's reply to each conversation (rendered with its own chat template), batched;
    None for a reply that did not end its turn within max_new_tokens, since a cut-off answer
    teaches a model to stop mid-sentence."""
    from ..serve import SamplingParams
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                            stop_token_ids=llm.tokenizer.stop_ids)
    replies: list[str | None] = []
    with show_progress("distilling", len(conversations), enabled=progress, unit="replies") as bar:
        for start in range(0, len(conversations), batch_size):
            ids = [llm.encode_prompt(c) for c in conversations[start:start + batch_size]]
            limit = min(max_new_tokens, llm.model.config.max_seq_len - max(map(len, ids)))
            outs: list[list[int]] = [[] for _ in ids]
            ended = [False] * len(ids)
            steps = 0
            for step in llm.engine.generate(ids, params):
                steps += 1
                for b, token in enumerate(step):
                    ended[b] |= token is None
                    if token is not None:
                        outs[b].append(token)
            # the engine stops yielding once every row has stopped, so a batch that ends before the
            # limit ended every turn
            for out, done in zip(outs, ended):
                text = llm.tokenizer.decode(out).strip()
                replies.append(text if (done or steps < limit) and text else None)
            bar.update(len(replies))
    return replies


def distill_records(llm, prompts: list[Prompt], config: SynthConfig) -> list[dict]:
    """Records of the teacher `llm`'s replies to `prompts` (chatterbot-corpus user turns), asked
    with `config.teacher_system` as the system message; replies cut off at max_new_tokens are left out."""
    from ..data.sources import chatterbot
    source = chatterbot()
    system = [{"role": "system", "content": config.teacher_system}] if config.teacher_system else []
    replies = teacher_replies(llm, [system + [{"role": "user", "content": p.text}] for p in prompts],
                              max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              seed=config.seed, batch_size=config.batch_size, progress=config.progress)
    teacher = config.license_of_teacher
    meta = {"kind": "distill", "teacher": config.distill, "teacher_license": teacher,
            "teacher_system": config.teacher_system, "prompts": f"{source.id} ({source.origin})",
            "prompts_license": source.license, "license": _and(teacher, source.license),
            "temperature": config.temperature, "max_new_tokens": config.max_new_tokens, "seed": config.seed,
            "made_by": MADE_BY}
    return [{"messages": message_pair(p.text, reply), "meta": {**meta, "prompt": p.where}}
            for p, reply in zip(prompts, replies) if reply is not None]


def choose_prompts(config: SynthConfig) -> list[Prompt]:
    """The prompts the teacher answers: all of chatterbot-corpus's, or max_prompts of them drawn
    by the seed (kept in corpus order)."""
    prompts = chatterbot_prompts()
    if config.max_prompts and config.max_prompts < len(prompts):
        keep = random.Random(config.seed).sample(range(len(prompts)), config.max_prompts)
        prompts = [prompts[i] for i in sorted(keep)]
    return prompts


def _and(*licenses: str) -> str:
    """An SPDX expression for text under all of `licenses`."""
    unique = list(dict.fromkeys(part for lic in licenses for part in lic.split(" AND ")))
    return " AND ".join(unique)


# -- the command ------------------------------------------------------------------------------------

def license_path(out: str | Path) -> Path:
    """The REUSE sidecar of OUT.jsonl, OUT.jsonl.license, which `lamina sft` reads."""
    out = Path(out)
    return out.with_name(out.name + ".license")


def license_text(expression: str, kinds: set[str], config: SynthConfig) -> str:
    """The REUSE sidecar: who holds the text of each kind of record present, and the SPDX
    expression all the records are under."""
    holders = ["lamina contributors (templates and identity answers)"] if kinds - {"distill"} else []
    if "distill" in kinds:
        holders += [f"replies generated by {config.distill} ({config.license_of_teacher})",
                    "prompts: Gunther Cox and contributors (chatterbot-corpus, BSD-3-Clause)"]
    return f"SPDX-FileCopyrightText: {'; '.join(holders)}\nSPDX-License-Identifier: {expression}\n"


def synth(out: str | Path, config: SynthConfig) -> dict:
    """Write OUT.jsonl (one record a line) and its license sidecar; return what was written:
    records and license by kind, replies dropped, the license expression."""
    out = Path(out)
    if out.exists():
        raise LaminaError(f"{out}: already exists; choose a new path or remove it first")
    records = task_records(config.tasks, config.n, config.seed, config.split)
    if config.identity:
        records += identity_records(config.identity, config.name)
    dropped = 0
    if config.distill:
        from ..serve import load
        prompts = choose_prompts(config)
        distilled = distill_records(load(config.distill), prompts, config)
        records += distilled
        dropped = len(prompts) - len(distilled)
    if not records:
        raise LaminaError("nothing to write: --n is 0 and neither --identity nor --distill is given")
    with atomic_file(out) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    kinds: dict[str, dict] = {}
    for r in records:
        kinds.setdefault(r["meta"]["kind"], {"records": 0, "license": r["meta"]["license"]})["records"] += 1
    expression = _and(*(k["license"] for k in kinds.values()))
    with atomic_file(license_path(out), overwrite=True) as tmp:
        tmp.write_text(license_text(expression, set(kinds), config))
    return {"path": str(out), "records": len(records), "kinds": kinds, "dropped_replies": dropped,
            "license": expression, "license_file": str(license_path(out))}
