"""Questions the ledger answers: what is in a corpus (report), where a training token came from
(trace), whether a document made it in and if not which rule stopped it (why), and what was kept
out of a source and by which rules (why_source); and the same answers rendered for people."""

from __future__ import annotations

from pathlib import Path

from ..errors import LaminaError
from .ledger import Ledger
from .shards import open_shard, read_manifest


def report(data_dir: str | Path) -> dict:
    ledger = Ledger.open(data_dir)
    try:
        counts = ledger.table("summary_documents")

        def by(col: str) -> dict[str, dict]:
            rows = ledger.q(f"SELECT {col}, SUM(documents), SUM(bytes) FROM {counts} WHERE status = 'kept' "
                            f"GROUP BY {col} ORDER BY {col}")
            tokens = ledger.tokens_by("source" if col == "source_id" else col)
            return {k: {"documents": n, "bytes": b, "tokens": tokens.get(k, 0)} for k, n, b in rows}
        status = dict(ledger.q(f"SELECT status, SUM(documents) FROM {counts} GROUP BY status ORDER BY status"))
        return {
            "data": str(data_dir),
            "tokens": sum(ledger.tokens_by_source().values()),
            "documents": status,
            "tokens_by_license": ledger.tokens_by_license(),
            "tokens_by_source": ledger.tokens_by_source(),
            "by_source": by("source_id"),
            "by_license": by("license"),        # a record's own license, else its source's
            "sources": [ledger.source(s) for (s,) in ledger.q("SELECT id FROM sources ORDER BY rowid")],
            "rejected": ledger.rejected(),
            "scrubbed": dict(ledger.q(f"SELECT kind, count FROM {ledger.table('summary_scrubs')} ORDER BY kind")),
            "shards": {n: {"split": s, "tokens": t} for n, s, t in
                       ledger.q("SELECT name, split, tokens FROM shards ORDER BY name")},
            "ledger_digest": ledger.content_digest(),
        }
    finally:
        ledger.close()


def trace(data_dir: str | Path, shard: str, offset: int) -> dict:
    """The document, source and license of the token at `offset` in `shard`."""
    name = Path(shard).name
    tokens = open_shard(data_dir, name)
    if not 0 <= offset < len(tokens):
        raise LaminaError(f"offset {offset} is outside {name}, which holds {len(tokens):,} tokens")
    ledger = Ledger.open(data_dir)
    try:
        rows = ledger.q("SELECT start, end, doc_id FROM ranges WHERE shard=? AND start<=? AND end>? ", name, offset, offset)
        if len(rows) != 1:
            raise LaminaError(f"{name}:{offset} traces to {len(rows)} documents in the ledger; the corpus is damaged")
        start, end, doc_id = rows[0]
        doc = ledger.document(doc_id)
        return {"shard": name, "offset": offset, "token": int(tokens[offset]),
                "is_bos": offset == start and int(tokens[offset]) == read_manifest(data_dir)["bos_id"],
                "range": [start, end], "document": doc, "source": ledger.source(doc["source_id"])}
    finally:
        ledger.close()


def why(data_dir: str | Path, ref: str) -> list[dict]:
    """Every document matching `ref` (a document id, a content sha256, a file on disk, or a path
    as recorded), each with its status, the reason and every filter's verdict."""
    ledger = Ledger.open(data_dir)
    try:
        ids = [int(ref)] if ref.isdigit() else ledger.documents_named(ref)
        if not ids:
            raise LaminaError(f"{ref}: no such document in {data_dir}; give a document id, a sha256, a file or a recorded path")
        docs = [ledger.document(i) for i in ids]
        for d in docs:
            d["source"] = ledger.source(d["source_id"])
            d["in_corpus"] = d["status"] == "kept"
        return docs
    finally:
        ledger.close()


def why_source(data_dir: str | Path, source_id: str) -> dict | None:
    """What became of a source's documents: its license (and where it was read), the policy's
    decision, documents by status, tokens in the corpus, and the documents kept out counted by
    the rule (filter) that stopped them, each with its commonest reasons and an example. None when
    `source_id` is not a source of this corpus."""
    ledger = Ledger.open(data_dir)
    try:
        source = ledger.source(source_id)
        if source is None:
            return None
        status = dict(ledger.q(f"SELECT status, SUM(documents) FROM {ledger.table('summary_documents')} "
                               "WHERE source_id=? GROUP BY status ORDER BY status", source_id))
        reasons: dict[str, list[dict]] = {}     # the commonest first; dedup reasons name their twin, so capped
        for rule, reason, n in ledger.q(f"SELECT rule, reason, documents FROM {ledger.table('summary_reasons')} "
                                        "WHERE source_id=? ORDER BY documents DESC, reason", source_id):
            reasons.setdefault(rule, []).append({"reason": reason, "documents": n})
        rules = ledger.q(f"SELECT rule, status, documents, bytes, example FROM {ledger.table('summary_rules')} "
                         "WHERE source_id=? ORDER BY documents DESC, rule", source_id)
        kept_out = [{"rule": rule, "status": st, "documents": n, "bytes": b, "reasons": reasons.get(rule, []),
                     "example": {"id": ex, "path": ledger.q("SELECT path FROM documents WHERE id=?", ex)[0][0]}}
                    for rule, st, n, b, ex in rules]
        return {"data": str(data_dir), "source": source, "documents": status,
                "tokens": ledger.tokens_by_source().get(source_id, 0), "kept_out": kept_out}
    finally:
        ledger.close()


def chart(summary: dict, path: str | Path) -> Path | None:
    """A PNG bar chart of tokens by source, coloured by license; None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sources = summary["sources"]
    names = [s["id"] for s in sources if summary["tokens_by_source"].get(s["id"])]
    licenses = sorted({s["license"] for s in sources if s["id"] in names})
    colors = {lic: plt.get_cmap("tab10")(i % 10) for i, lic in enumerate(licenses)}
    lic_of = {s["id"]: s["license"] for s in sources}
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(names) + 1.5))
    ax.barh(names, [summary["tokens_by_source"][n] for n in names], color=[colors[lic_of[n]] for n in names])
    ax.set_xscale("log")
    ax.set_xlabel("tokens")
    ax.set_title(f"{summary['tokens']:,} tokens by source")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colors[l]) for l in licenses], labels=licenses,
              fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


# --- the same answers for people (`lamina data report|trace|why`; --json prints the dicts above) ---

def render_report(summary: dict) -> None:
    """Tables of tokens, documents and bytes by source and by license, and what was kept out."""
    from rich.console import Console
    from rich.table import Table
    console = Console()
    for title, rows in (("by source", summary["by_source"]), ("by license", summary["by_license"])):
        table = Table(title=f"{summary['tokens']:,} tokens {title}")
        for col in ("", "documents", "bytes", "tokens"):
            table.add_column(col, justify="left" if not col else "right")
        for k, v in rows.items():
            table.add_row(k, f"{v['documents']:,}", f"{v['bytes']:,}", f"{v['tokens']:,}")
        console.print(table)
    table = Table(title="kept out")
    for col in ("source", "status", "documents", "reason"):
        table.add_column(col)
    for r in summary["rejected"]:
        table.add_row(r["source"], r["status"], f"{r['documents']:,}", r["reason"])
    console.print(table)
    if summary["scrubbed"]:
        console.print("scrubbed: " + ", ".join(f"{n:,} {k}" for k, n in summary["scrubbed"].items()))
    if summary.get("chart"):
        console.print(f"chart: {summary['chart']}")


def render_trace(t: dict) -> str:
    doc, src = t["document"], t["source"]
    return "\n".join([
        f"{t['shard']}[{t['offset']}] = token {t['token']}{' (BOS)' if t['is_bos'] else ''}, "
        f"tokens {t['range'][0]}..{t['range'][1]} of document {doc['id']}",
        f"document {doc['id']}: {doc['path']} (sha256 {doc['content_hash']})",
        f"source {src['id']}: {src['origin']}; license {src['license']}; {src['attribution']}"])


def render_why_source(source: dict) -> str:
    src, counts = source["source"], source["documents"]
    decision = "allowed" if src["allowed"] else "kept out"
    lines = [f"source {src['id']}: {src['origin']}; license {src['license']} (from {src['license_from']}); "
             f"policy: {decision}, {src['reason']}",
             f"documents: {', '.join(f'{n:,} {k}' for k, n in counts.items()) or 'none'}; "
             f"{source['tokens']:,} tokens in the corpus"]
    for r in source["kept_out"]:
        lines.append(f"  {r['documents']:>6,} {r['status']} by {r['rule']} (e.g. document {r['example']['id']} "
                     f"{r['example']['path']})")
        lines += [f"         {reason['documents']:>6,}  {reason['reason']}" for reason in r["reasons"]]
    return "\n".join(lines)


def render_why(docs: list[dict]) -> str:
    lines = []
    for d in docs:
        verdict = f"in the corpus ({d['split']}, {d['tokens']:,} tokens)" if d["in_corpus"] else \
            f"kept out ({d['status']}): {d['reason']}"
        lines.append(f"document {d['id']} {d['source_id']}:{d['path']}: {verdict}")
        if d.get("record"):
            r = d["record"]
            lines.append(f"  record {r['id'] or '(no id)'}: license {r['license'] or 'the source’s'}; "
                         f"origin {r['origin'] or 'not given'}")
        lines += [f"  {'pass' if v['passed'] else 'FAIL'} {v['filter']}: {v['reason']}" for v in d["verdicts"]]
    return "\n".join(lines)
