"""`lamina speedrun`, the main job: from nothing to a model people can chat with, on the
license-clean built-in corpus, in one command — data build (policy, cleaning, dedup, ledger) → a
BPE tokenizer trained on the corpus's own training documents (Llama 3's special tokens and chat
template) → pretraining → validation bits per byte and samples → what the model memorized (the
canaries the corpus plants, and documents extractable from their first tokens) → supervised
fine-tuning on clean synthetic chat data, with a quiz of held-out questions before and after →
the transparency report of the chat model (`lamina report`: data by source and license for each
stage, what the policy kept out, compute, energy, CO2e and water, the memorization and canary
audits, FMTI coverage), with the run's loss curve, samples and chat quiz around it."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from .data import build_corpus, data_recipe
from .errors import LaminaError
from .eval.memorization import audit
from .fields import InvalidField, check_fields
from .post.config import config_from_flags
from .post.quiz import Quiz, answer_all, heldout_problems, quiz
from .post.sft import SFTConfig, sft
from .post.synth import SynthConfig, synth
from .report.transparency import ReportConfig, collect
from .report.transparency import write_report as write_report_files
from .serve import load
from .train import RunResult, train, train_recipe

DATA_RECIPE = "clean-small"
CHAT_PREFIX = "sft."         # overrides of the chat stage: sft.max_steps=4
IDENTITY_QUESTION = "Who are you?"      # one of the identity conversations it trains on
AUDIT = {"k": 32, "m": 32, "per_group": 50, "candidates": 1000}   # the memorization audit's sizes


@dataclass(frozen=True, kw_only=True)
class ChatStage:
    """The last stage: full fine-tuning (`lamina sft`) of the pretrained model on clean chat data
    that `lamina synth` writes — templated problems with checked answers and identity
    conversations answered from the model's own lamina.json — and the same held-out questions
    asked before and after. Sized, with its quizzes, to about two minutes on 2 CPU cores."""
    tasks: tuple[str, ...] = ("arithmetic:1",)  # templated tasks: short sums, whose format a 5M model learns fast
    examples: int = 3000                  # templated training conversations
    questions: int = 100                  # held-out questions asked before and after
    max_new_tokens: int = 40              # per reply; a worked answer takes about 20
    max_steps: int = 120
    batch_size: int = 8                   # packed rows per step
    seq_len: int = 256                    # tokens per packed row: about six conversations
    lr: float = 1e-3                      # a 5M model fine-tunes at near its pretraining rate (3e-4, 3e-3: no better)
    warmup_steps: int = 10
    seed: int = 0                         # the data written, and the packing order

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "tasks", tuple(self.tasks))
        for name in ("examples", "questions", "max_new_tokens"):
            if getattr(self, name) <= 0:
                raise InvalidField(name, getattr(self, name), "must be positive")
        self.synth_config("")                       # unknown tasks fail before any work
        self.sft_config("", "", "")

    def synth_config(self, identity: str) -> SynthConfig:
        return SynthConfig(tasks=self.tasks, n=self.examples, seed=self.seed, identity=identity or None,
                           name="lamina-speedrun", progress=False)

    def sft_config(self, model: str, data: str, out: str) -> SFTConfig:
        return SFTConfig(model=model, data=(data,), out=out, seq_len=self.seq_len, batch_size=self.batch_size,
                         max_steps=self.max_steps, lr=self.lr, warmup_steps=min(self.warmup_steps, self.max_steps),
                         schedule="cosine", seed=self.seed, log_every=10)


def chat_stage(overrides: list[str]) -> ChatStage:
    """The ChatStage with `key=value` overrides (given on the command line as sft.key=value)."""
    return config_from_flags(ChatStage, overrides, prefix=CHAT_PREFIX)


@dataclass(frozen=True, kw_only=True)
class SpeedrunConfig:
    out: str = ""                       # run folder to create ("": runs/speedrun-<time>)
    recipe: str = "speedrun"            # the training recipe
    vocab_size: int = 4096              # the tokenizer trained on the corpus
    overrides: tuple[str, ...] = ()     # key=value changes to the training recipe; sft.key=value to the chat stage
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class ChatResult:
    """What the chat stage made and measured."""
    stage: ChatStage
    data: dict                  # what `synth` wrote
    sft: RunResult
    before: Quiz
    after: Quiz
    identity: str               # the chat model's reply to IDENTITY_QUESTION
    seconds: float


def speedrun(config: SpeedrunConfig) -> Path:
    """Run every stage into config.out and return the report's path."""
    out = Path(config.out or time.strftime("runs/speedrun-%Y%m%d-%H%M%S"))
    if out.exists():
        raise LaminaError(f"{out}: already exists; choose a new --out")
    train_config = train_recipe(config.recipe, [o for o in config.overrides if not o.startswith(CHAT_PREFIX)],
                                data=str(out / "data"), out=str(out / "train"))   # a bad recipe fails before any work
    stage = chat_stage([o.removeprefix(CHAT_PREFIX) for o in config.overrides if o.startswith(CHAT_PREFIX)])
    context = train_config.model_config(config.vocab_size, None, None).max_seq_len
    if stage.seq_len > context:
        raise InvalidField(f"{CHAT_PREFIX}seq_len", stage.seq_len, f"the pretrained model takes at most {context} tokens")
    started = time.perf_counter()
    print(f"[1/5] data: building the {DATA_RECIPE} corpus with a {config.vocab_size}-token BPE trained on it")
    corpus = data_recipe(DATA_RECIPE)
    build_config = dataclasses.replace(corpus.config, tokenizer=f"bpe:{config.vocab_size}")
    build = build_corpus(corpus.load_sources(), out=out / "data", policy=corpus.policy, config=build_config,
                         recipe=f"{DATA_RECIPE} (speedrun)", rebuild=corpus.rebuild_record(), progress=config.progress)
    print(f"      {build.stats['tokens']:,} tokens from {build.stats['kept']} of {build.stats['documents']} documents")
    data_seconds = time.perf_counter() - started
    print(f"[2/5] pretraining: {train_config.model}, {train_config.total_steps} steps of "
          f"{train_config.batch_size} x {train_config.seq_len} tokens")
    result = train(train_config, progress=config.progress)
    print(f"[3/5] memorization: {len(build.ledger.q('SELECT 1 FROM sources WHERE kind = ?', 'canary'))} canary "
          f"sources, exposure against {AUDIT['candidates']} random secrets; extraction of {AUDIT['m']} tokens "
          f"from {AUDIT['k']}")
    pretrained = load(result.checkpoint, compile=False)     # brief decoding here: eager, no compile beside it
    memorized = audit(pretrained.model, pretrained.tokenizer, out / "data", progress=config.progress, **AUDIT)
    del pretrained
    print(f"[4/5] chat: fine-tuning on {stage.examples} templated and the identity conversations, "
          f"{stage.max_steps} steps of {stage.batch_size} x {stage.seq_len} tokens; {stage.questions} held-out "
          "questions before and after")
    chat = chat_model(out, result.checkpoint, stage, config.progress)
    print("[5/5] report")
    build.ledger.close()
    return write_report(out, result, data_seconds, time.perf_counter() - started, chat, memorized)


def chat_model(out: Path, pretrained: Path, stage: ChatStage, progress: bool) -> ChatResult:
    """Write the chat data, quiz the pretrained model, fine-tune it, quiz the chat model."""
    started = time.perf_counter()
    data = out / "chat" / "synth.jsonl"
    made = synth(data, stage.synth_config(str(pretrained)))
    asked = heldout_problems(stage.tasks, stage.questions, stage.seed)
    before = quiz(load(pretrained, compile=False), asked, stage.max_new_tokens)
    print(f"      before: {before.ended:.0%} of replies end their turn, {before.accuracy:.0%} correct")
    tuned = sft(stage.sft_config(str(pretrained), str(data), str(out / "sft")), progress=progress)
    chat = load(tuned.checkpoint, compile=False)
    after = quiz(chat, asked, stage.max_new_tokens)
    print(f"      after:  {after.ended:.0%} of replies end their turn, {after.accuracy:.0%} correct")
    [(identity, _)] = answer_all(chat, [IDENTITY_QUESTION], max_new_tokens=96)
    return ChatResult(stage, made, tuned, before, after, identity, time.perf_counter() - started)


def chat_section(chat: ChatResult) -> list[str]:
    s, kinds = chat.stage, chat.data["kinds"]
    tuned = chat.sft.made_by
    reply = chat.after.replies[0] if chat.after.replies else None
    return [
        "## Chat model",
        "",
        f"The pretrained model, fine-tuned in full (`lamina sft`, loss on the assistant's tokens) for "
        f"{tuned['train_config']['max_steps']} steps of {s.batch_size} packed rows of {s.seq_len} tokens "
        f"({tuned['tokens']:,} tokens) on clean synthetic chat data (`lamina synth`, {chat.data['license']}): "
        f"{kinds.get('task', {}).get('records', 0):,} templated {', '.join(s.tasks)} problems with worked answers "
        f"and {kinds.get('identity', {}).get('records', 0)} identity conversations answered from its own "
        f"lamina.json. The same {len(chat.after.replies)} held-out questions (no training problem is one of "
        f"them), answered greedily in its chat template, at most {s.max_new_tokens} new tokens; the stage took "
        f"{chat.seconds:.0f} s.",
        "",
        "| model | replies that end their turn | correct answers |",
        "|---|---:|---:|",
        f"| before SFT (pretrained) | {chat.before.ended:.0%} | {chat.before.accuracy:.0%} |",
        f"| after SFT | {chat.after.ended:.0%} | {chat.after.accuracy:.0%} |",
        "",
        *([f"A held-out question and the chat model's reply ({'right' if reply.correct else 'wrong'}; the answer is "
           f"{reply.answer}):", "", f"```\nuser: {reply.question}\nassistant: {reply.text}\n```", ""] if reply else []),
        f"Asked who it is, a question it trained on ({kinds.get('identity', {}).get('records', 0)} identity "
        f"conversations among {chat.data['records']:,}):",
        "",
        f"```\nuser: {IDENTITY_QUESTION}\nassistant: {chat.identity}\n```",
        "",
        f"The chat model: `{chat.sft.checkpoint}` (`lamina chat` talks with it; its tokenizer carries the "
        "chat template it was trained with).",
        "",
    ]


def chat_record(chat: ChatResult) -> dict:
    return {"stage": dataclasses.asdict(chat.stage), "data": chat.data, "checkpoint": str(chat.sft.checkpoint),
            "sft_tokens": chat.sft.made_by["tokens"], "before": chat.before.record(), "after": chat.after.record(),
            "identity": {"question": IDENTITY_QUESTION, "reply": chat.identity}, "seconds": chat.seconds}


def summary(result: RunResult, data_seconds: float, total_seconds: float, chat: ChatResult | None) -> list[str]:
    """The run's own lines ahead of the transparency report: what it made in how long, its
    validation, loss curve and samples."""
    m = result.made_by
    chat_seconds = f", chat fine-tuning and quizzes {chat.seconds:.0f} s" if chat else ""
    return [
        "## The run",
        "",
        f"A {m['parameters'] / 1e6:.1f}M-parameter Llama ({m['train_config']['model']}) trained from scratch on "
        f"{m['tokens']:,} tokens of the license-clean `{DATA_RECIPE}` corpus{', then fine-tuned to chat,' if chat else ''} "
        f"in {total_seconds / 60:.1f} minutes (data and tokenizer {data_seconds:.0f} s{chat_seconds}).",
        "",
        f"**Validation: {result.val_loss:.4f} nats per token, {result.val_bpb:.4f} bits per byte.**",
        "",
        "![loss curve](train/loss.png)",
        "",
        "Samples of the pretrained model:",
        "",
        *[f"```\n{s}\n```\n" for s in result.samples],
        f"The pretrained model: `{result.checkpoint}` (a Hugging Face model directory; "
        "`lamina generate` and transformers load it as it is).",
        "",
    ]


def write_report(out: Path, result: RunResult, data_seconds: float, total_seconds: float,
                 chat: ChatResult | None = None, memorized: dict | None = None) -> Path:
    """The transparency report (`lamina report`) of the run's last model, with the run's summary
    ahead of it and the chat stage's quiz after it: report.md, report.html and report.json in `out`."""
    model = chat.sft.checkpoint if chat else result.checkpoint
    audit = memorized | {"model": str(result.checkpoint)} if memorized else None
    record = collect(model, ReportConfig(run_audit=False), audit=audit)
    run = {"validation": {"loss": result.val_loss, "bits_per_byte": result.val_bpb}, "seconds": total_seconds,
           "pretrained": str(result.checkpoint), **({"chat": chat_record(chat)} if chat else {})}
    written = write_report_files(record, out, title="lamina speedrun", before=summary(result, data_seconds, total_seconds, chat),
                                 after=chat_section(chat) if chat else [], extra={"speedrun": run})
    return written["report.md"]
