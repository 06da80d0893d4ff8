"""The model card and transparency report (`lamina report MODEL_DIR`), drawn from records, never
typed by hand: the model's own lamina.json and those of the models it was trained from (the
chain of `base_model`), the data ledger each stage names (what the policy kept out and why, the
PII scrubbed), evaluation results as `lamina eval --out` wrote them (each score beside its
decontamination result), and the memorization audit (`lamina audit`, run here when not given).

`collect` gathers the record (also written as report.json); `report.render` lays it out as
Markdown and as one self-contained HTML page with the charts inlined; `write_report` does both."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..checkpoint.base import read_json
from ..checkpoint.hf_config import config_from_hf
from ..data.provenance import locate
from ..errors import LaminaError
from ..fields import InvalidField, check_fields
from ..version import __version__

FORMAT = "lamina-report/1"
STAGES = {   # tool: (name, what the stage optimised)
    "lamina train": ("pretraining", "next-token prediction (cross-entropy) on the corpus, from random weights"),
    "lamina sft": ("SFT", "next-token cross-entropy on the assistant's tokens of chat conversations"),
    "lamina dpo": ("DPO", "direct preference optimisation (Rafailov et al. 2023): prefer the chosen reply over the "
                          "rejected one, relative to the frozen starting model"),
    "lamina grpo": ("GRPO", "group relative policy optimisation (Shao et al. 2024) on verifiable rewards of "
                            "sampled completions"),
}


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    """What the report reads beyond the model directory, and the stated factors of its estimates."""
    evals: tuple[str, ...] = ()   # `lamina eval --out` result files, each score shown with its decontamination
    audit: str = ""               # a `lamina audit --out` file; "" runs the audit here (on the pretraining corpus)
    run_audit: bool = True        # False: no audit run here (the report says it was not run)
    grid_intensity: float = 0.0   # g CO2e per kWh; 0 keeps each run's stated figure
    pue: float = 1.0              # data-centre power usage effectiveness applied to the devices' energy
    wue: float = 1.8              # on-site water, L per kWh of device energy: the US data-centre average (Shehabi et al. 2016)

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "evals", tuple(self.evals))
        for name in ("grid_intensity", "wue"):
            if getattr(self, name) < 0:
                raise InvalidField(name, getattr(self, name), "must not be negative")
        if self.pue < 1:
            raise InvalidField("pue", self.pue, "is at least 1 (facility energy over device energy)")


def _made_by(model_dir: Path) -> dict | None:
    path = model_dir / "lamina.json"
    if not path.is_file():
        return None
    record = read_json(path)
    return record.get("made_by") if isinstance(record, dict) and isinstance(record.get("made_by"), dict) else None


def _corpus(folder: Path, recorded_digest: str | None) -> dict:
    """What a stage's data ledger says beyond the tokens consumed: documents by status, what the
    policy and filters kept out and why, PII scrubbed, the recipe and policy of the build. A
    fine-tuning run's ledger (its chat data files) has no shards and was not scrubbed: its tokens
    are the documents' own counts, and `scrubbed` is None."""
    from contextlib import closing

    from ..data.ledger import Ledger
    from ..data.report import report
    summary = report(folder)
    build = folder / "build.json"
    built = read_json(build) if build.is_file() else None
    with closing(Ledger.open(folder)) as ledger:
        removals = ledger.removals()
        tokens = summary["tokens"] if summary["shards"] else \
            int(ledger.q("SELECT COALESCE(SUM(tokens), 0) FROM documents WHERE status = 'kept'")[0][0])
    return {"path": str(folder), "kind": "corpus" if built else "chat data", "ledger_digest": summary["ledger_digest"],
            "matches": recorded_digest is None or recorded_digest == summary["ledger_digest"],
            "tokens": tokens, "documents": summary["documents"],
            "sources": [{k: s[k] for k in ("id", "kind", "license", "origin", "allowed", "reason")}
                        for s in summary["sources"]],
            "rejected": summary["rejected"], "removals": removals, "scrubbed": summary["scrubbed"] if built else None,
            "canaries": sum(s["kind"] == "canary" for s in summary["sources"]),
            "recipe": (built or {}).get("recipe"), "policy": (built or {}).get("policy"),
            # every source a public package lamina reads by name: anyone can build the same corpus again
            "rebuildable_by_anyone": bool(built and isinstance(built.get("rebuild"), dict)
                                          and not built["rebuild"].get("folders"))}


def _stage(made_by: dict, checkpoint: Path | None, embedded: bool) -> dict:
    """One training stage: its tool, what it optimised, the data it consumed (and, where its
    ledger is found, that corpus), its compute, and its validation figures."""
    tool = made_by.get("tool") or ""
    name, objective = STAGES.get(tool, ("base model", "not recorded: a model lamina did not train"))
    if made_by.get("lora"):
        lora = made_by["lora"]
        name += f" (LoRA r={lora.get('r')})" if isinstance(lora, dict) else " (LoRA)"
    data = made_by.get("data") if isinstance(made_by.get("data"), dict) else None
    corpus, note = None, ""
    if data:
        folder = locate(data.get("data"), checkpoint)
        if folder is not None:
            corpus = _corpus(folder, data.get("ledger_digest"))
            if not corpus["matches"]:
                note = "its data ledger changed after training (digest differs)"
        else:
            note = f"its data ledger ({data.get('data')}) is not here: consumed tokens from its record only"
    if embedded:
        note = "; ".join(filter(None, [note, "its own directory is not here: compute not recorded"]))
    validation = made_by.get("validation") if isinstance(made_by.get("validation"), dict) else {}
    return {"name": name, "tool": tool or None, "objective": objective,
            "checkpoint": str(checkpoint) if checkpoint else made_by.get("path") or made_by.get("ref"),
            "steps": made_by.get("step"), "tokens": made_by.get("tokens"),
            "data": {k: data.get(k) for k in ("tokens", "documents", "tokens_by_source", "tokens_by_license",
                                              "ledger_digest", "order_digest")} if data else None,
            "corpus": corpus, "compute": None if embedded else made_by.get("compute"),
            "validation": {k: v for k, v in validation.items() if v is not None}, "note": note,
            "weights_sha256": made_by.get("weights_sha256")}


def stages(model_dir: Path) -> list[dict]:
    """Every training stage of the model, earliest first: its own record, then its base model's
    (read from the base's directory where it is still there, else from the copy embedded in the
    fine-tune's record)."""
    made_by = _made_by(model_dir)
    if made_by is None:
        raise LaminaError(f"{model_dir}: no lamina.json with a made_by record; `lamina report` reports on the models "
                          "lamina trains (`lamina train`, `sft`, `dpo`, `grpo`, `speedrun`)")
    chain, path, embedded = [], model_dir.resolve(), False
    seen = {path}
    while made_by is not None:
        chain.append(_stage(made_by, None if embedded else path, embedded))
        base = made_by.get("base_model")
        if not isinstance(base, dict):
            break
        there = Path(base["path"]).resolve() if isinstance(base.get("path"), str) else None
        own = _made_by(there) if there is not None and there not in seen else None
        if own is not None:
            path, made_by, embedded = there, own, False
            seen.add(path)
        else:
            made_by, embedded = base, True
    return chain[::-1]


def compute_totals(chain: list[dict], config: ReportConfig) -> dict:
    """FLOPs, device-hours by device type, wall time, energy (measured or estimated, as each run
    said), CO2e at the stated grid intensity, and on-site water at the stated WUE, summed over
    the stages that recorded their compute."""
    recs = [s["compute"] for s in chain if s["compute"]]
    device: dict[str, float] = {}
    for c in recs:
        for kind, seconds in c.get("device_seconds", {}).items():
            device[kind] = device.get(kind, 0.0) + seconds / 3600
    energy = sum(c.get("energy_kwh", 0.0) for c in recs)
    grids = sorted({config.grid_intensity or c.get("grid_intensity_g_per_kwh", 0.0) for c in recs})
    co2e = sum(c.get("energy_kwh", 0.0) * config.pue * (config.grid_intensity or c.get("grid_intensity_g_per_kwh", 0.0))
               for c in recs) / 1000
    return {"stages": len(recs), "missing": [s["name"] for s in chain if not s["compute"]],
            "model_flops": sum(c.get("model_flops", 0.0) for c in recs), "device_hours": device,
            "wall_hours": sum(c.get("wall_seconds", 0.0) for c in recs) / 3600,
            "energy_kwh": energy, "energy_methods": sorted({c.get("energy_method", "not recorded") for c in recs}),
            "pue": config.pue, "facility_energy_kwh": energy * config.pue,
            "grid_intensity_g_per_kwh": grids, "co2e_kg": co2e,
            "co2e_method": (f"device energy × PUE {config.pue:g} × {', '.join(f'{g:g}' for g in grids)} g CO2e/kWh "
                            f"({'as stated here' if config.grid_intensity else 'the grid intensity each run stated'})"),
            "wue_l_per_kwh": config.wue, "water_litres": energy * config.wue,
            "water_method": (f"device energy × WUE {config.wue:g} L/kWh, on-site cooling water (The Green Grid's WUE; "
                             "1.8 is the US data-centre average of Shehabi et al. 2016); the water used to generate "
                             "the electricity is not counted")}


def evaluations(files: tuple[str, ...]) -> list[dict]:
    """Every headline score of every `lamina eval --out` file, with its decontamination result
    (items whose n-grams appear in the training data given to the eval, and the score without
    them) or None when the eval was not decontaminated."""
    from ..eval.table import columns
    rows = []
    for f in files:
        try:
            loaded = json.loads(Path(f).read_text())
        except (OSError, ValueError) as e:
            raise LaminaError(f"{f}: not a readable `lamina eval --out` file ({e})") from None
        runs = loaded if isinstance(loaded, list) else [loaded]
        if not all(isinstance(r, dict) and isinstance(r.get("results"), dict) for r in runs):
            raise LaminaError(f"{f}: not a `lamina eval --out` file (no results)")
        for run in runs:
            config = run.get("config", {})
            for key, header, metric in columns([run]):
                result = run["results"][key]
                if result.get(metric) is None:
                    continue
                seen = result.get("contamination")
                rows.append({"file": str(f), "model": config.get("model"), "task": key, "title": header,
                             "metric": metric, "value": result[metric], "stderr": result.get(f"{metric}_stderr"),
                             "n": result.get("n"), "decontaminated_against": config.get("decontaminate") or [],
                             "contamination": None if seen is None else {
                                 "ngram": seen["ngram"], "items": seen["contaminated"], "fraction": seen["fraction"],
                                 "clean": seen["clean"].get(metric), "clean_n": seen["clean"].get("n", 0)}})
    return rows


def run_audit(model_dir: Path, chain: list[dict], progress: bool) -> dict | None:
    """The memorization audit of the model against its pretraining corpus (None when that
    corpus is not here)."""
    from ..eval import load_model
    from ..eval.memorization import audit
    corpus = next((s["corpus"] for s in chain if s["tool"] == "lamina train" and s["corpus"]), None)
    if corpus is None:
        return None
    llm = load_model(str(model_dir))
    return audit(llm.model, llm.tokenizer, corpus["path"], progress=progress) | {"model": str(model_dir)}


def architecture(model_dir: Path) -> dict:
    c = config_from_hf(read_json(model_dir / "config.json"), model_dir / "config.json")
    return {"family": "Llama (decoder-only transformer: RMSNorm, RoPE, SwiGLU, grouped-query attention)",
            "layers": c.n_layers, "dim": c.dim, "heads": c.n_heads, "kv_heads": c.n_kv_heads, "ffn_dim": c.ffn_dim,
            "vocab_size": c.vocab_size, "context": c.max_seq_len, "tied_embeddings": c.tie_embeddings,
            "input": "text", "output": "text"}


def collect(model_dir: str | Path, config: ReportConfig, *, audit: dict | None = None, progress: bool = False) -> dict:
    """The report's whole record. `audit` (a `lamina audit` result) takes the place of
    `config.audit` and of running the audit here."""
    from . import fmti
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise LaminaError(f"{model_dir}: no such model directory")
    chain = stages(model_dir)
    evals = evaluations(config.evals)           # bad files fail before the audit runs
    if audit is None and config.audit:
        audit = read_json(Path(config.audit))
        if not isinstance(audit, dict) or "extraction" not in audit:
            raise LaminaError(f"{config.audit}: not a `lamina audit --out` file")
    if audit is None and config.run_audit:
        audit = run_audit(model_dir, chain, progress)
    own = read_json(model_dir / "lamina.json")
    made_by = own["made_by"]
    record = {
        "format": FORMAT,
        "model": {"path": str(model_dir), "parameters": made_by.get("parameters"), **architecture(model_dir),
                  "files_sha256": own.get("files", {})},
        "stages": chain,
        "compute": compute_totals(chain, config),
        "evaluations": evals,
        "memorization": audit,
        "generated": {"tool": "lamina report", "lamina_version": __version__,
                      "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                      "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()}},
    }
    record["fmti"] = fmti.coverage(record)
    return record


def write_report(record: dict, out: str | Path, *, title: str = "", before: list[str] = (),
                 after: list[str] = (), extra: dict | None = None) -> dict[str, Path]:
    """report.md, report.html (self-contained) and report.json in `out`, with the charts as PNG
    files beside them; `before` and `after` are Markdown lines around the report's own sections
    (the speedrun's run summary and chat stage) and `extra` goes into report.json."""
    from ..files import atomic_file
    from .render import CHARTS, charts, html, markdown
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = charts(record, out)
    for name, file in CHARTS.items():          # a chart of an earlier report that this one has no data for
        if name not in images:
            (out / file).unlink(missing_ok=True)
    text = markdown(record, images, title=title, before=list(before), after=list(after))
    written = {}
    for name, body in (("report.md", text), ("report.html", html(text, out, title or "transparency report")),
                       ("report.json", json.dumps(record | (extra or {}), indent=2) + "\n")):
        with atomic_file(out / name, overwrite=True) as tmp:
            tmp.write_text(body)
        written[name] = out / name
    return written | images
