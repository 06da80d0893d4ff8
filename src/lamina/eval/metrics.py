"""Metrics as lm-evaluation-harness defines them (lm_eval/api/task.py, api/metrics.py,
filters/extraction.py), so lamina's numbers are comparable with published ones.

- acc: the choice with the highest log-likelihood is the gold one.
- acc_norm: the same after dividing each log-likelihood by the length of the choice's text.
  lm-eval 0.4 divides by the number of characters, `len(choice)` (its docs say bytes; for the
  ASCII text of these benchmarks the two agree); lamina does what lm-eval's code does.
- exact_match (GSM8K): the extracted answer equals the reference after lm-eval's normalization.
- standard errors: sample standard deviation / sqrt(n), as lm-eval's `mean_stderr`."""

from __future__ import annotations

import math
import re


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def mean_stderr(xs: list[float]) -> float:
    """lm-eval's `mean_stderr`: sample standard deviation (n - 1) over sqrt(n); 0 for n < 2."""
    if len(xs) < 2:
        return 0.0
    mu = mean(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def argmax(xs: list[float]) -> int:
    """The first index of the largest value, as numpy's argmax breaks ties."""
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def choice_metrics(lls: list[float], gold: int, lengths: list[int]) -> dict[str, float]:
    """acc and acc_norm of one multiple-choice item (lengths: characters of each choice's text)."""
    return {"acc": float(argmax(lls) == gold),
            "acc_norm": float(argmax([ll / n for ll, n in zip(lls, lengths)]) == gold)}


def aggregate_choice(per_item: list[dict[str, float]], metrics: list[str]) -> dict[str, float]:
    """Mean and standard error of each metric over items."""
    out: dict[str, float] = {}
    for m in metrics:
        xs = [d[m] for d in per_item]
        out[m], out[f"{m}_stderr"] = mean(xs), mean_stderr(xs)
    return out


def perplexity(lls: list[float]) -> tuple[float, float]:
    """lm-eval's LAMBADA perplexity, exp(-mean log-likelihood), with a delta-method standard
    error (lm-eval bootstraps it; the two agree closely for a few hundred items or more)."""
    ppl = math.exp(-mean(lls))
    return ppl, ppl * mean_stderr(lls)


# GSM8K, lm_eval/tasks/gsm8k/gsm8k-cot.yaml: two answer extractions and one normalization.
STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")


def _regex_filter(pattern: re.Pattern, text: str, group_select: int) -> str:
    """lm-eval's RegexFilter: the chosen findall match, its first non-empty group, stripped."""
    found = pattern.findall(text)
    if not found:
        return "[invalid]"
    match = found[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), "[invalid]")
    return match.strip()


def extract_gsm8k(text: str) -> dict[str, str]:
    """The answer read from a generation, by lm-eval's strict and flexible filters."""
    return {"strict-match": _regex_filter(STRICT, text, 0),
            "flexible-extract": _regex_filter(FLEXIBLE, text, -1)}


def normalize_answer(text: str) -> str:
    """exact_match's normalization: drop commas, dollar signs, a '#### ' preamble and a final
    period; compare case-insensitively."""
    for pattern in IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()
