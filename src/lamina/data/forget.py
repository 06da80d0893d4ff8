"""Forgetting: `lamina data forget SOURCE_OR_DOC --data CORPUS --reason WHY`.

A corpus cannot be edited in place: its checkpoints name it by its ledger's digest, and that
ledger is the record of what they trained on. So forgetting builds the corpus again, from the
recipe its build.json keeps, with the same seed and settings and one change to the policy: the
source on its deny list (`deny_sources`), or the document's content hash on it (`deny_hashes`).
The new corpus's ledger records the removal (what, how many documents, why, when, and the digest
of the corpus it came from), carries any earlier removals, and shows each denied document as
rejected by the deny list. A corpus that trained its own tokenizer trains it again without the
forgotten text. Given run folders, it lists the checkpoints that consumed the forgotten tokens,
directly or through a base model: those must be retrained on the new corpus."""

from __future__ import annotations

import dataclasses
import json
import time
from contextlib import closing
from pathlib import Path

from ..errors import LaminaError
from .build import build_corpus
from .ledger import Ledger
from .provenance import matching_documents, who_saw
from .recipes import Recipe


def forget(data_dir: str | Path, ref: str, *, reason: str, out: str | Path | None = None,
           runs: list[str | Path] = (), progress: bool = False) -> dict:
    """Build `data_dir` again without `ref` (a source id, or a document by sha256, file or
    recorded path) into `out`; the removal, the new corpus's counts, and the checkpoints under
    `runs` that must be retrained."""
    data_dir = Path(data_dir)
    if not reason.strip():
        raise LaminaError("say why with --reason: the ledger records it beside the removal")
    build_file = data_dir / "build.json"
    if not build_file.is_file():
        raise LaminaError(f"{data_dir}: not a corpus built by `lamina data build` (no build.json)")
    try:
        built = json.loads(build_file.read_text())
    except (OSError, ValueError) as e:
        raise LaminaError(f"{build_file}: not readable ({e})") from None
    recipe = Recipe.from_build(built, build_file)
    with closing(Ledger.open(data_dir)) as ledger:
        what, ids = matching_documents(ledger, ref)
        ids = ids.tolist()
        # a few thousand ids a query: SQLite takes at most 250,000 parameters, a source may have millions
        chunks = [ids[i:i + 5000] for i in range(0, len(ids), 5000)]
        hashes = sorted({h for c in chunks for (h,) in ledger.q(f"SELECT content_hash FROM documents WHERE id IN "
                                                                f"({','.join('?' * len(c))})", *c) if h})
        kept = sum(int(ledger.q(f"SELECT COUNT(*) FROM documents WHERE status = 'kept' AND id IN "
                                f"({','.join('?' * len(c))})", *c)[0][0]) for c in chunks)
        digest, earlier = ledger.content_digest(), ledger.removals()
    if what == "document" and not hashes:
        raise LaminaError(f"{ref}: names no source or document of {data_dir}; give a source id, a document's sha256, "
                          "a file or a recorded path")
    policy = dataclasses.replace(
        recipe.policy, deny_sources=recipe.policy.deny_sources | ({ref} if what == "source" else set()),
        deny_hashes=recipe.policy.deny_hashes | set(hashes))
    out = Path(out) if out else data_dir.parent / f"{data_dir.name}-forget-{time.strftime('%Y%m%d-%H%M%S')}"
    removal = {"ref": ref, "what": what, "documents": len(ids), "reason": reason.strip(),
               "requested": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "from_corpus": str(data_dir.resolve()),
               "from_digest": digest}
    build = build_corpus(recipe.load_sources(), out=out, policy=policy, config=recipe.config,
                         recipe=f"{recipe.name} (forgot {ref})", rebuild=recipe.rebuild_record(),
                         removals=(*earlier, removal), progress=progress)
    build.ledger.close()
    retrain = []
    if runs:
        rows = who_saw(ref, list(runs), require_match=False)
        retrain = [{"checkpoint": r["checkpoint"], "tokens": r["tokens"], "inherited": r["total"] - r["tokens"]}
                   for r in rows if r["total"] > 0]
    return {"removal": removal, "kept_before": kept, "out": str(out), "stats": build.stats, "retrain": retrain,
            "checked": bool(runs)}


def render_forget(result: dict) -> str:
    r = result["removal"]
    lines = [f"forgot {r['what']} {r['ref']} ({r['documents']} documents, {result['kept_before']} of them in the "
             f"corpus): {r['reason']}",
             f"wrote {result['out']}: {result['stats']['tokens']:,} tokens from {result['stats']['kept']:,} documents; "
             "its ledger records the removal"]
    if not result["checked"]:
        lines.append("give --runs DIR... to list the checkpoints that must be retrained")
    elif not result["retrain"]:
        lines.append("no checkpoint under the runs given consumed it")
    else:
        lines.append("retrain on the new corpus (they consumed it):")
        lines += [f"  {c['checkpoint']}: {c['tokens']:,} tokens itself"
                  + (f", {c['inherited']:,} through its base model" if c["inherited"] else "") for c in result["retrain"]]
    return "\n".join(lines)
