"""Provenance the other way round: which checkpoints consumed a source or a document, and how much.

Every checkpoint lamina writes while training (pretraining, SFT, DPO, GRPO) keeps, beside its
weights, the tokens it consumed of each document of its data ledger (`train_state/`, the
`doc_tokens` tensor), and its lamina.json names that ledger (`made_by.data`: the corpus folder and
its digest) and the model it started from (`made_by.base_model`). `who_saw` reads them: for each
checkpoint found under the given folders, the tokens of the matching documents it consumed
itself, and those its base models consumed before it (a fine-tune of a model that read a source
carries what it learned there)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open

from ..errors import LaminaError
from .ledger import Ledger

STATE = Path("train_state") / "state.safetensors"


def find_checkpoints(paths: list[str | Path]) -> list[Path]:
    """Every model directory with a consumed-data record (train_state/) at or under `paths`."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise LaminaError(f"{p}: no such folder")
        if (p / STATE).is_file():
            found.add(p.resolve())
        found.update(s.parent.parent.resolve() for s in p.rglob(str(STATE)) if (s.parent.parent / "lamina.json").is_file())
    return sorted(found, key=lambda c: (str(c.parent), c.name))


def consumed(checkpoint: Path) -> np.ndarray:
    """Tokens consumed per ledger document id (index), as the checkpoint recorded them."""
    try:
        with safe_open(checkpoint / STATE, "np") as f:
            if "doc_tokens" not in f.keys():
                raise LaminaError(f"{checkpoint}: its training state records no consumed tokens")
            return f.get_tensor("doc_tokens")
    except LaminaError:
        raise
    except Exception as e:
        raise LaminaError(f"{checkpoint / STATE}: not readable ({e})") from None


def locate(recorded: str | None, near: Path | None = None) -> Path | None:
    """The data folder a run recorded (`made_by.data.data`): as written (absolute, or relative to
    the current folder), else relative to each folder above `near` (a run records the path it
    was given, relative to where it ran). None when no ledger is found there."""
    if not recorded:
        return None
    p = Path(recorded)
    candidates = [p] + ([a / p for a in Path(near).resolve().parents] if near is not None and not p.is_absolute() else [])
    return next((c for c in candidates if (c / Ledger.FILE).is_file()), None)


def matching_documents(ledger: Ledger, ref: str) -> tuple[str, np.ndarray]:
    """("source" or "document", the ledger's document ids, ascending) that `ref` names here: a
    source id, or a document by content sha256, file on disk or recorded path (ids are per ledger,
    so a bare number is not taken as one)."""
    if ledger.source(ref) is not None:
        return "source", ledger.source_documents(ref)
    return "document", np.array(ledger.documents_named(ref), dtype=np.int64)


def _record(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / "lamina.json").read_text()).get("made_by") or {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LaminaError(f"{checkpoint / 'lamina.json'}: not readable ({e})") from None


def direct(checkpoint: Path, ref: str, ledgers: dict[str, tuple[Ledger, str, tuple[str, np.ndarray]]]) -> dict:
    """What `checkpoint` itself consumed of `ref`: tokens, documents, its ledger, and whether the
    ledger is still the one it trained on (its digest). `ledgers` keeps each ledger open, with
    its digest and the documents `ref` names there, for the next checkpoint of the same data."""
    made_by = _record(checkpoint)
    data = made_by.get("data") if isinstance(made_by.get("data"), dict) else {}
    found = locate(data.get("data"), checkpoint)
    out = {"checkpoint": str(checkpoint), "step": made_by.get("step"), "tool": made_by.get("tool", "lamina train"),
           "data": data.get("data"), "tokens": 0, "documents": 0, "matches": None, "note": ""}
    if found is None:
        out["note"] = "its data ledger is not here" if data.get("data") else "it records no data ledger"
        return out
    folder = str(found)
    if folder not in ledgers:
        ledger = Ledger.open(folder)
        ledgers[folder] = (ledger, ledger.content_digest(), matching_documents(ledger, ref))
    _, digest, (what, ids) = ledgers[folder]
    if data.get("ledger_digest") and data["ledger_digest"] != digest:
        out["note"] = "the ledger changed since this checkpoint was trained (digest differs)"
    tokens = consumed(checkpoint)
    seen = tokens[ids[ids < len(tokens)]]
    out.update(tokens=int(seen.sum()), documents=int(np.count_nonzero(seen > 0)), matches=what if len(seen) else None)
    return out


def who_saw(ref: str, paths: list[str | Path], *, require_match: bool = True) -> list[dict]:
    """For each checkpoint under `paths`: the tokens of `ref` (a source id or a document) it
    consumed itself, and, through its chain of base models, those consumed before it. A `ref`
    that no ledger of theirs names is an error unless not `require_match`."""
    checkpoints = find_checkpoints(paths)
    if not checkpoints:
        raise LaminaError(f"no checkpoints with a consumed-data record under {', '.join(map(str, paths))}")
    ledgers: dict[str, tuple[Ledger, str, tuple[str, np.ndarray]]] = {}
    seen_before: dict[Path, dict] = {}     # a base model is often also one of the checkpoints listed

    def own(path: Path) -> dict:
        if path not in seen_before:
            seen_before[path] = direct(path, ref, ledgers)
        return seen_before[path]
    rows = []
    try:
        for ck in checkpoints:
            row = dict(own(ck))
            inherited, base, seen = [], _record(ck).get("base_model"), {ck}
            while isinstance(base, dict) and base.get("path"):
                path = Path(base["path"]).resolve()
                if path in seen or not (path / STATE).is_file():
                    if path not in seen:
                        inherited.append({"checkpoint": str(path), "tokens": None,
                                          "note": "not here, or without a consumed-data record"})
                    break
                seen.add(path)
                up = own(path)
                inherited.append({k: up[k] for k in ("checkpoint", "tokens", "documents", "note")})
                base = _record(path).get("base_model")
            row["inherited"] = inherited
            row["total"] = row["tokens"] + sum(i["tokens"] or 0 for i in inherited)
            rows.append(row)
    finally:
        for ledger, _, _ in ledgers.values():
            ledger.close()
    if require_match and not any(r["matches"] for r in rows) and \
            not any(i.get("tokens") for r in rows for i in r["inherited"]):
        raise LaminaError(f"{ref}: names no source or document in the data ledgers of these checkpoints")
    return rows


def render_who_saw(ref: str, rows: list[dict]) -> str:
    lines = [f"who saw {ref}:"]
    for r in rows:
        via = "".join(f"; {i['tokens'] if i['tokens'] is not None else '?'} before it in {i['checkpoint']}"
                      for i in r["inherited"])
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(f"  {r['checkpoint']}: {r['tokens']:,} tokens of {r['documents']} documents{via}{note}")
    return "\n".join(lines)


__all__ = ["who_saw", "find_checkpoints", "consumed", "locate", "render_who_saw"]
