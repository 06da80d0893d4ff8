"""Coverage against the Foundation Model Transparency Index (Bommasani et al. 2023; the indicator
list of github.com/stanford-crfm/fmti, `fmti-indicators.csv`): for the upstream indicators (data,
data labor, data access, compute, methods, data mitigations), which ones a lamina transparency
report answers, with the figure it answers with, and which it leaves uncovered.

Each answer is drawn from the report's own record; an indicator whose answer would need
something lamina does not record (who made the data, the hardware's owner) says so."""

from __future__ import annotations

from collections.abc import Callable

Answer = Callable[[dict], "str | None"]


def _tokens(r: dict) -> str | None:
    stages = [s for s in r["stages"] if s["data"]]
    if not stages:
        return None
    return "; ".join(f"{s['name']}: {s['data']['tokens']:,} tokens" for s in stages)


def _sources(r: dict) -> str | None:
    names = [f"{len(s['data']['tokens_by_source'])} sources in {s['name']}" for s in r["stages"] if s["data"]]
    return ", ".join(names) + " (tables: tokens by source)" if names else None


def _licenses(r: dict) -> str | None:
    found = {lic for s in r["stages"] if s["data"] for lic in s["data"]["tokens_by_license"]}
    return f"tokens by license for every stage ({', '.join(sorted(found))})" if found else None


def _selection(r: dict) -> str | None:
    policies = [s for s in r["stages"] if s["corpus"] and s["corpus"].get("policy")]
    if not policies:
        return None
    allow = policies[0]["corpus"]["policy"]["allow"]
    return f"license policy: {len(allow)} permissive licenses allowed, every other source kept out with its reason"


def _curation(r: dict) -> str | None:
    corpora = [s for s in r["stages"] if s["corpus"]]
    if not corpora:
        return None
    return "; ".join(f"{s['name']}: " + ", ".join(f"{n:,} {k}" for k, n in s["corpus"]["documents"].items())
                     for s in corpora) + " documents (filters, exact and near dedup; reasons in the ledger)"


def _augmentation(r: dict) -> str | None:
    synthetic = [s["name"] for s in r["stages"] if s["data"] and any("synth" in k for k in s["data"]["tokens_by_source"])]
    canaries = any(s["corpus"] and s["corpus"].get("canaries") for s in r["stages"])
    parts = ([f"synthetic chat data in {', '.join(synthetic)}"] if synthetic else []) + \
        (["canary strings planted for the memorization audit"] if canaries else [])
    return "; ".join(parts) if parts else None


def _harmful(r: dict) -> str | None:
    if not any(s["corpus"] for s in r["stages"]):
        return None
    return "none: sources are chosen by license; the filters are for quality and duplication, not harmful content"


def _pii(r: dict) -> str | None:
    corpora = [s for s in r["stages"] if s["corpus"]]
    if not corpora:
        return None
    return "; ".join(f"{s['name']}: " + ("not scrubbed (chat data read as given)" if s["corpus"]["scrubbed"] is None
                                         else "scrubbed " + (", ".join(f"{n:,} {k}" for k, n in
                                                                       s["corpus"]["scrubbed"].items()) or "nothing found"))
                     for s in corpora)


def _copyright(r: dict) -> str | None:
    return _licenses(r) and "copyright status through each source's license (public domain, permissive licenses)"


def _queryable(r: dict) -> str | None:
    if not any(s["corpus"] for s in r["stages"]):
        return None
    return "the data ledger answers queries: `lamina data why`, `lamina data trace`, `lamina data who-saw`"


def _direct(r: dict) -> str | None:
    corpora = [s for s in r["stages"] if s["corpus"] and s["corpus"]["kind"] == "corpus"]
    if not corpora or not all(s["corpus"]["rebuildable_by_anyone"] for s in corpora):
        return None
    return "every pretraining source is a public package: `lamina data build` on the recipe in build.json " \
        "rebuilds the same corpus"


def _flops(r: dict) -> str | None:
    c = r["compute"]
    return f"{c['model_flops']:.1g} model FLOPs over {c['stages']} recorded stages" if c["stages"] else None


def _duration(r: dict) -> str | None:
    c = r["compute"]
    return f"{c['wall_hours']:.2g} hours of training wall time" if c["stages"] else None


def _hardware(r: dict) -> str | None:
    c = r["compute"]
    return ", ".join(f"{k} {h:.2g} device-hours" for k, h in c["device_hours"].items()) if c["stages"] else None


def _energy(r: dict) -> str | None:
    c = r["compute"]
    return f"{c['energy_kwh']:.2g} kWh ({'; '.join(c['energy_methods'])})" if c["stages"] else None


def _carbon(r: dict) -> str | None:
    c = r["compute"]
    return f"{c['co2e_kg']:.2g} kg CO2e ({c['co2e_method']})" if c["stages"] else None


def _environment(r: dict) -> str | None:
    c = r["compute"]
    return f"{c['water_litres']:.2g} L of water ({c['water_method']})" if c["stages"] else None


def _stages(r: dict) -> str | None:
    return " → ".join(s["name"] for s in r["stages"])


def _objectives(r: dict) -> str | None:
    return "; ".join(f"{s['name']}: {s['objective']}" for s in r["stages"])


def _frameworks(r: dict) -> str | None:
    return f"PyTorch, through lamina {r['generated']['lamina_version']}"


def _privacy(r: dict) -> str | None:
    if not any(s["corpus"] and s["corpus"]["scrubbed"] is not None for s in r["stages"]):
        return None
    return "e-mail addresses, IP addresses, phone numbers, API and private keys scrubbed when the corpus is built; " \
        "the memorization audit measures what the model reproduces"


def _copyright_mitigation(r: dict) -> str | None:
    return _selection(r) and "only permissively licensed or public-domain sources admitted; the audit measures extraction"


# (subdomain, indicator, answer): the upstream indicators, in the index's order
INDICATORS: list[tuple[str, str, Answer | None]] = [
    ("Data", "Data size", _tokens),
    ("Data", "Data sources", _sources),
    ("Data", "Data creators", None),
    ("Data", "Data source selection", _selection),
    ("Data", "Data curation", _curation),
    ("Data", "Data augmentation", _augmentation),
    ("Data", "Harmful data filtration", _harmful),
    ("Data", "Data copyright status", _copyright),
    ("Data", "Data license status", _licenses),
    ("Data", "Personal information in data", _pii),
    ("Data labor", "Use of human labor", None),
    ("Data labor", "Employment of data laborers", None),
    ("Data labor", "Geographic distribution of data laborers", None),
    ("Data labor", "Wages", None),
    ("Data labor", "Instructions for creating data", None),
    ("Data labor", "Labor protections", None),
    ("Data labor", "Third party partners", None),
    ("Data access", "Queryable external data access", _queryable),
    ("Data access", "Direct external data access", _direct),
    ("Compute", "Compute usage", _flops),
    ("Compute", "Development duration", _duration),
    ("Compute", "Compute hardware", _hardware),
    ("Compute", "Hardware owner", None),
    ("Compute", "Energy usage", _energy),
    ("Compute", "Carbon emissions", _carbon),
    ("Compute", "Broader environmental impact", _environment),
    ("Methods", "Model stages", _stages),
    ("Methods", "Model objectives", _objectives),
    ("Methods", "Core frameworks", _frameworks),
    ("Methods", "Additional dependencies", lambda r: "none: training calls no external service, API or tool"),
    ("Data mitigations", "Mitigations for privacy", _privacy),
    ("Data mitigations", "Mitigations for copyright", _copyright_mitigation),
]


def coverage(record: dict) -> list[dict]:
    """Each upstream indicator: covered or not, and the report's answer."""
    rows = []
    for subdomain, indicator, answer in INDICATORS:
        text = answer(record) if answer else None
        rows.append({"subdomain": subdomain, "indicator": indicator, "covered": text is not None, "answer": text or ""})
    return rows
