"""The transparency report laid out for people: Markdown (GitHub tables), the same as one
self-contained HTML page (markdown-it renders it; the charts are inlined as data URIs, so the page
is a single file), and the charts themselves (matplotlib): the data mix of every stage, canary
exposure against repetitions, and the extraction rate by copy count."""

from __future__ import annotations

import base64
import html as html_lib
from pathlib import Path

CHARTS = {"mix": "report-data-mix.png", "canaries": "report-canaries.png", "extraction": "report-extraction.png"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    from ..files import atomic_file
    with atomic_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    _plt().close(fig)
    return path


def charts(record: dict, out: Path) -> dict[str, Path]:
    """The PNG charts the record has data for, by name."""
    plt, made = _plt(), {}
    with_data = [s for s in record["stages"] if s["data"] and s["data"]["tokens_by_source"]]
    if with_data:
        fig, axes = plt.subplots(len(with_data), 1, squeeze=False, sharex=True,
                                 figsize=(8, 1.2 + sum(0.35 * len(s["data"]["tokens_by_source"]) + 0.6 for s in with_data)),
                                 gridspec_kw={"height_ratios": [len(s["data"]["tokens_by_source"]) for s in with_data]})
        licenses = sorted({lic for s in with_data for lic in s["data"]["tokens_by_license"]})
        colors = {lic: plt.get_cmap("tab10")(i % 10) for i, lic in enumerate(licenses)}
        for ax, s in zip(axes[:, 0], with_data):
            lic_of = {src["id"]: src["license"] for src in (s["corpus"] or {}).get("sources", [])}
            names = list(s["data"]["tokens_by_source"])
            ax.barh(names, [s["data"]["tokens_by_source"][n] for n in names],
                    color=[colors.get(lic_of.get(n), "grey") for n in names])
            ax.invert_yaxis()
            ax.set_xscale("log")
            ax.set_title(f"{s['name']}: {s['data']['tokens']:,} tokens consumed", fontsize=10)
        axes[-1, 0].set_xlabel("tokens (log scale)")
        axes[0, 0].legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colors[lic]) for lic in licenses],
                          labels=licenses, fontsize=8, loc="lower right")
        fig.tight_layout()
        made["mix"] = _save(fig, out / CHARTS["mix"])
    audit = record["memorization"] or {}
    exposure = audit.get("exposure")
    if exposure:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        reps = [c["repetitions"] for c in exposure["canaries"]]
        ax.scatter(reps, [c["exposure"] for c in exposure["canaries"]], label="each canary", alpha=0.6)
        means = exposure["mean_exposure_by_repetitions"]
        ax.plot([int(r) for r in means], list(means.values()), marker="o", color="black", label="mean")
        ax.axhline(exposure["max_exposure"], linestyle=":", color="grey", label="the most the candidates can show")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("repetitions in the training data")
        ax.set_ylabel("exposure (bits)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        made["canaries"] = _save(fig, out / CHARTS["canaries"])
    if audit.get("extraction"):
        ex = audit["extraction"]
        groups = [(f"{c} copies", v) for c, v in ex["by_copies"].items()]
        groups += [("validation (control)", ex["by_split"]["validation"])] if "validation" in ex["by_split"] else []
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar([g for g, _ in groups], [100 * v["rate"] for _, v in groups], color="tab:red")
        ax.set_ylabel(f"% extracted ({ex['m']} tokens from {ex['k']})")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        fig.tight_layout()
        made["extraction"] = _save(fig, out / CHARTS["extraction"])
    return made


def _cell(text) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _share(n: int, total: int) -> str:
    return f"{n / total:.1%}" if total else "-"


def _data_section(record: dict, images: dict) -> list[str]:
    lines = ["## Data", "", "The tokens each stage consumed, by license and by source, from the checkpoint's own count "
             "(every training window mapped to its documents in the data ledger); then, where the stage's ledger is "
             "here, what its corpus held and what the policy and filters kept out.", ""]
    if "mix" in images:
        lines += [f"![data mix]({images['mix'].name})", ""]
    for i, s in enumerate(record["stages"], 1):
        lines += [f"### Stage {i}: {s['name']}", ""]
        d, c = s["data"], s["corpus"]
        if d is None:
            lines += ["No data record: lamina did not train this stage, so what it read is not known here.", ""]
            continue
        total = d["tokens"] or 0
        lines += [f"{total:,} tokens of {d['documents']:,} documents consumed; data order digest "
                  f"`{(d.get('order_digest') or 'not recorded')[:16]}`, ledger digest `{(d['ledger_digest'] or '')[:16]}`.",
                  "", "| license | tokens | share |", "|---|---:|---:|",
                  *[f"| {lic} | {n:,} | {_share(n, total)} |" for lic, n in d["tokens_by_license"].items()], ""]
        lic_of = {src["id"]: src["license"] for src in (c or {}).get("sources", [])}
        lines += ["| source | license | tokens |", "|---|---|---:|",
                  *[f"| {src} | {lic_of.get(src, '-')} | {n:,} |" for src, n in d["tokens_by_source"].items()], ""]
        if c is None:
            lines += [f"_{s['note']}_", ""] if s["note"] else []
            continue
        docs = ", ".join(f"{n:,} {k}" for k, n in c["documents"].items())
        policy = c.get("policy") or {}
        lines += [f"The {c['kind']} (`{c['path']}`{', recipe ' + c['recipe'] if c.get('recipe') else ''}) holds "
                  f"{c['tokens']:,} tokens; its documents: {docs}."
                  + (f" The license policy admits {', '.join(policy['allow'])}." if policy.get("allow") else "")
                  + (f" {c['canaries']} canary sources are planted for the memorization audit." if c["canaries"] else ""),
                  ""]
        if c["rejected"]:
            lines += ["Kept out, and why:", "", "| source | status | reason | documents |", "|---|---|---|---:|",
                      *[f"| {r['source']} | {r['status']} | {_cell(r['reason'])} | {r['documents']:,} |"
                        for r in c["rejected"]],
                      ""]
        if c["removals"]:
            lines += ["Forgotten on request (`lamina data forget`: the corpus built again without them):", "",
                      "| removed | documents | why | when |", "|---|---:|---|---|",
                      *[f"| {r['what']} {_cell(r['ref'])} | {r['documents']} | {_cell(r['reason'])} | {r['requested']} |"
                        for r in c["removals"]], ""]
        if c["scrubbed"] is None:
            lines += ["Chat data files are read as given: not scrubbed of personal information.", ""]
        else:
            scrubbed = ", ".join(f"{n:,} {k}" for k, n in c["scrubbed"].items()) or "none found"
            lines += [f"Personal information scrubbed before tokenizing: {scrubbed}.", ""]
        if s["note"]:
            lines += [f"_{s['note']}_", ""]
    return lines


def _compute_section(record: dict) -> list[str]:
    c = record["compute"]
    rows = [s for s in record["stages"] if s["compute"]]
    lines = ["## Compute", "",
             "| stage | model FLOPs | device-hours | wall hours | energy (kWh) | energy method |",
             "|---|---:|---|---:|---:|---|",
             *[f"| {s['name']} | {s['compute']['model_flops']:.3g} | "
               + ", ".join(f"{k} {v / 3600:.3g}" for k, v in s["compute"]["device_seconds"].items())
               + f" | {s['compute'].get('wall_seconds', 0) / 3600:.3g} | {s['compute']['energy_kwh']:.3g} | "
               f"{s['compute']['energy_method']} |" for s in rows], ""]
    if not rows:
        return lines[:2] + ["No stage recorded its compute here.", ""]
    lines += [f"- **model FLOPs**: {c['model_flops']:.3g} (6N per token plus attention, forward and backward)",
              "- **device-hours**: " + ", ".join(f"{k} {h:.3g}" for k, h in c["device_hours"].items()),
              f"- **energy**: {c['energy_kwh']:.3g} kWh at the devices ({'; '.join(c['energy_methods'])}); "
              f"{c['facility_energy_kwh']:.3g} kWh with PUE {c['pue']:g}",
              f"- **CO2e**: {c['co2e_kg'] * 1000:.3g} g ({c['co2e_method']})",
              f"- **water**: {c['water_litres']:.3g} L ({c['water_method']})", ""]
    if c["missing"]:
        lines += [f"Not counted (no compute record here): {', '.join(c['missing'])}.", ""]
    return lines


def _score(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if "perplexity" in metric or metric == "bits_per_byte" else f"{100 * value:.1f}%"


def _eval_section(record: dict) -> list[str]:
    rows = record["evaluations"]
    lines = ["## Evaluations", ""]
    if not rows:
        return lines + ["No evaluation results were given (`lamina eval MODEL --decontaminate DATA --out FILE`, "
                        "then `lamina report MODEL --eval FILE`).", ""]
    lines += ["Each score beside its decontamination: benchmark items whose n-grams appear in the training data "
              "given to the eval, and the score with those items removed.", "",
              "| model | benchmark | score | items | seen in training | score without them |",
              "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        seen = r["contamination"]
        cont = "not checked" if seen is None else f"{seen['items']:,} ({seen['fraction']:.1%}, {seen['ngram']}-grams)"
        clean = "-" if seen is None else _score(seen["clean"], r["metric"])
        lines.append(f"| {_cell(r['model'])} | {r['title']} | {_score(r['value'], r['metric'])} | {r['n']} | {cont} | {clean} |")
    return lines + [""]


def _memorization_section(record: dict, images: dict, decode) -> list[str]:
    audit = record["memorization"]
    if audit is None:
        return ["## Memorization audit", "", "Not run (its pretraining corpus is not here, or it was skipped).", ""]
    ex = audit["extraction"]
    lines = ["## Memorization audit", "",
             f"Audited model: `{audit.get('model', record['model']['path'])}`, against `{audit['data']}`. "
             f"Extractable memorization (Carlini et al. 2021, 2023): greedy continuation of a document's first "
             f"{ex['k']} tokens (k) reproduces its next {ex['m']} (m) exactly. Training documents are sampled by how "
             "many times the build mixed them in; validation documents, never trained on, are the control.", ""]
    if "extraction" in images:
        lines += [f"![extraction by copies]({images['extraction'].name})", ""]
    lines += ["| documents | extracted | sampled | rate |", "|---|---:|---:|---:|",
              *[f"| {title} {name} | {v['extracted']} | {v['sampled']} | {v['rate']:.1%} |"
                for title, key in (("split", "by_split"), ("copies", "by_copies"), ("source", "by_source"),
                                   ("license", "by_license")) for name, v in ex.get(key, {}).items()], ""]
    if ex["examples"]:
        lines += ["Reproduced documents:", ""]
        for e in ex["examples"]:
            shown = decode(e["prefix"] + e["continuation"]) if decode else f"{len(e['prefix'])}+{len(e['continuation'])} tokens"
            lines += [f"- document {e['doc']} ({e['source']}, {e['copies']} copies): `{' '.join(shown.split())[:200]}`"]
        lines.append("")
    return lines + _canary_section(audit.get("exposure"), images)


def _canary_section(exposure: dict | None, images: dict) -> list[str]:
    lines = ["## Canary audit", ""]
    if exposure is None:
        return lines + ["The corpus planted no canaries (a data recipe's `canaries = [1, 4, 16, 64]` plants them).", ""]
    lines += [f"The corpus planted {len(exposure['canaries'])} canaries, random secrets in the format "
              f"`{exposure['format']}` ({exposure['secret_space']:,} possible), at "
              f"{', '.join(map(str, exposure['mean_exposure_by_repetitions']))} repetitions. Exposure (Carlini et al. "
              f"2019) ranks each true secret among {exposure['candidates']:,} random candidates by the model's "
              f"likelihood: log2(candidates + 1) − log2(rank), at most {exposure['max_exposure']:.2f} bits; "
              "extrapolated to the whole secret space by a normal fit of the candidates' scores.", ""]
    if "canaries" in images:
        lines += [f"![exposure against repetitions]({images['canaries'].name})", ""]
    lines += ["| repetitions | canaries | mean exposure (bits) | extrapolated | ranks |", "|---:|---:|---:|---:|---|",
              *[f"| {r} | {sum(c['repetitions'] == int(r) for c in exposure['canaries'])} | {v:.2f} | "
                f"{exposure['mean_exposure_extrapolated_by_repetitions'][r]:.2f} | "
                f"{', '.join(str(c['rank']) for c in exposure['canaries'] if c['repetitions'] == int(r))} |"
                for r, v in exposure["mean_exposure_by_repetitions"].items()], ""]
    return lines


def _fmti_section(record: dict) -> list[str]:
    rows = record["fmti"]
    covered = sum(r["covered"] for r in rows)
    return ["## Foundation Model Transparency Index coverage", "",
            f"The index's upstream indicators (Bommasani et al. 2023): this report answers {covered} of {len(rows)}.", "",
            "| subdomain | indicator | answered | with |", "|---|---|---|---|",
            *[f"| {r['subdomain']} | {r['indicator']} | {'yes' if r['covered'] else 'not covered'} | {_cell(r['answer'])} |"
              for r in rows], ""]


def markdown(record: dict, images: dict[str, Path], *, title: str = "", before: list[str] = (),
             after: list[str] = (), decode=None) -> str:
    """The report as Markdown; the charts are referenced by file name (they sit beside it)."""
    m, g = record["model"], record["generated"]
    if decode is None:
        decode = _decoder(m["path"])
    chain = " → ".join(f"{s['name']}" + (f" ({s['steps']} steps)" if s["steps"] else "") for s in record["stages"])
    params = f"{m['parameters'] / 1e6:.1f}M-parameter " if m.get("parameters") else ""
    lines = [f"# {title or 'Model card and transparency report'}", "",
             f"Generated by `{g['tool']}` (lamina {g['lamina_version']}, {g['date']}) from the model's records: its "
             "lamina.json and its base models', their data ledgers, evaluation and audit results. Nothing here is "
             "typed by hand.", "", *before,
             "## Model", "",
             f"- **model**: `{m['path']}`, a {params}{m['family']}",
             f"- **shape**: {m['layers']} layers, width {m['dim']}, {m['heads']} heads ({m['kv_heads']} key/value), "
             f"feed-forward {m['ffn_dim']}, vocabulary {m['vocab_size']:,}, context {m['context']:,} tokens; "
             f"{m['input']} in, {m['output']} out",
             f"- **stages**: {chain}",
             *[f"  - {s['name']}: {s['objective']}"
               + (f"; validation {s['validation']['loss']:.4f} nats/token, {s['validation']['bits_per_byte']:.4f} "
                  "bits/byte" if s["validation"].get("loss") is not None else "") for s in record["stages"]],
             "- **weights**: " + ", ".join(f"`{k}` sha256 `{v[:16]}…`" for k, v in m["files_sha256"].items()
                                           if k.endswith((".safetensors", ".bin", ".gguf"))), ""]
    lines += _data_section(record, images) + _compute_section(record) + _eval_section(record)
    lines += _memorization_section(record, images, decode) + _fmti_section(record) + list(after)
    return "\n".join(lines)


def _decoder(model_dir: str):
    """The model's tokenizer's decode, for the audit's examples (None when it has none)."""
    try:
        from ..tokenizer import load_tokenizer
        return load_tokenizer(model_dir).decode
    except Exception:
        return None


def html(text: str, folder: Path, title: str) -> str:
    """The Markdown as one HTML page; images next to it in `folder` are inlined as data URIs."""
    from markdown_it import MarkdownIt
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    default_image = md.renderer.rules.get("image")

    def image(self, tokens, idx, options, env):
        token = tokens[idx]
        src = folder / token.attrGet("src")
        if src.is_file():
            token.attrSet("src", "data:image/png;base64," + base64.b64encode(src.read_bytes()).decode())
        return default_image(tokens, idx, options, env)
    md.add_render_rule("image", image)
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
             "table{border-collapse:collapse;margin:0.5rem 0}td,th{border:1px solid #ccc;padding:0.2rem 0.5rem}"
             "code{background:#f4f4f4}img{max-width:100%}")
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html_lib.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n{md.render(text)}</body></html>\n")
