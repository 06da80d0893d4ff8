"""Asking a chat model held-out templated questions: what the speedrun's report says its chat
model does, before and after fine-tuning. Each question is rendered with the model's own chat
template and answered greedily, in batches, by lamina's KV-cache engine. A reply *ends its turn*
when generation stops at an end-of-turn token (EOS, `<|eot_id|>`, ...) before `max_new_tokens`;
it is *correct* when `Problem.check` finds the problem's answer as its final answer. The
questions come from the tasks' held-out split, which no `lamina synth` training record shares a
problem with (`tasks.split_of`)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import zip_longest

from ..serve import LLM, SamplingParams
from .tasks import Problem, get_task, problems


@dataclass(frozen=True)
class Reply:
    question: str
    answer: str          # the right one
    text: str            # what the model said
    ended: bool          # stopped at an end-of-turn token before max_new_tokens
    correct: bool


@dataclass(frozen=True)
class Quiz:
    replies: list[Reply]
    max_new_tokens: int

    @property
    def ended(self) -> float:
        """Share of replies that ended their turn."""
        return sum(r.ended for r in self.replies) / max(1, len(self.replies))

    @property
    def accuracy(self) -> float:
        return sum(r.correct for r in self.replies) / max(1, len(self.replies))

    def record(self, examples: int = 3) -> dict:
        return {"questions": len(self.replies), "ended_turn": self.ended, "accuracy": self.accuracy,
                "max_new_tokens": self.max_new_tokens,
                "examples": [vars(r) for r in self.replies[:examples]]}


def heldout_problems(tasks: tuple[str, ...], n: int, seed: int = 0) -> list[Problem]:
    """`n` held-out problems spread evenly over `tasks` (names, optionally :LEVEL), interleaved."""
    chosen = [get_task(spec) for spec in tasks]
    per_task = [problems(t, n // len(chosen) + (i < n % len(chosen)), seed=seed, split="heldout")
                for i, t in enumerate(chosen)]
    return [p for round_ in zip_longest(*per_task) for p in round_ if p is not None]


def answer_all(llm: LLM, questions: list[str], max_new_tokens: int, batch_size: int = 64) -> list[tuple[str, bool]]:
    """(reply, ended its turn) for each question asked as a one-turn chat, greedily."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop_token_ids=llm.tokenizer.stop_ids)
    out: list[tuple[str, bool]] = []
    for start in range(0, len(questions), batch_size):
        ids = [llm.encode_prompt([{"role": "user", "content": q}]) for q in questions[start:start + batch_size]]
        limit = min(max_new_tokens, llm.model.config.max_seq_len - max(map(len, ids)))
        said: list[list[int]] = [[] for _ in ids]
        for step in llm.engine.generate(ids, params):
            for row, token in zip(said, step):
                if token is not None:
                    row.append(token)
        # a row stops at its end-of-turn token, which it does not yield: fewer than `limit` tokens
        # means it ended its turn
        out += [(llm.tokenizer.decode(row).strip(), len(row) < limit) for row in said]
    return out


def quiz(llm: LLM, asked: list[Problem], max_new_tokens: int = 48, batch_size: int = 64) -> Quiz:
    """The model's replies to `asked`, each checked against its problem's answer."""
    answers = answer_all(llm, [p.question for p in asked], max_new_tokens, batch_size)
    return Quiz([Reply(p.question, p.answer, text, ended, p.check(text)) for p, (text, ended) in zip(asked, answers)],
                max_new_tokens)
