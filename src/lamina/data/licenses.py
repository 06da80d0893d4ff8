"""Licenses as SPDX expressions, and the policy that decides what may be trained on.

A source's license is read from what it declares (an SPDX expression, a Python distribution's
`License-Expression`, `License` field or trove classifiers, else the license text in its `License`
field, see license_text.py) and normalised to SPDX, together with where it was read; anything we
cannot name becomes `NOASSERTION`, which no policy allows. `Policy.decide` returns a verdict with
its reason, and the ledger stores both."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .license_text import NOASSERTION, identify_license

# the default allow-list: public domain, CC0, MIT, BSD variants, Apache-2.0, PSF, ISC, CC-BY
PERMISSIVE = frozenset({
    "LicenseRef-Public-Domain", "CC0-1.0", "Unlicense", "MIT", "MIT-0", "BSD-2-Clause", "BSD-3-Clause",
    "0BSD", "Apache-2.0", "PSF-2.0", "Python-2.0", "ISC", "CC-BY-4.0", "CC-BY-3.0", "Zlib",
})
# copyleft families: named so that a rejection says "copyleft", not just "not allowed"
COPYLEFT = re.compile(r"^(A?GPL|LGPL|MPL|EPL|EUPL|CDDL|OSL|CC-BY-SA|CC-BY-NC|SSPL)", re.I)

# free-text names seen in `License:` fields and trove classifiers, lower-cased
_ALIASES = {
    "mit": "MIT", "mit license": "MIT", "the mit license": "MIT", "mit-0": "MIT-0",
    "bsd": "BSD-3-Clause", "bsd license": "BSD-3-Clause", "new bsd": "BSD-3-Clause",
    "3-clause bsd": "BSD-3-Clause", "bsd-3-clause": "BSD-3-Clause", "bsd 3-clause": "BSD-3-Clause",
    "modified bsd": "BSD-3-Clause", "simplified bsd": "BSD-2-Clause", "bsd-2-clause": "BSD-2-Clause",
    "apache": "Apache-2.0", "apache 2.0": "Apache-2.0", "apache-2.0": "Apache-2.0",
    "apache license 2.0": "Apache-2.0", "apache software license": "Apache-2.0",
    "apache license, version 2.0": "Apache-2.0", "apache 2": "Apache-2.0",
    "psf": "PSF-2.0", "psf-2.0": "PSF-2.0", "psfl": "PSF-2.0", "python software foundation license": "PSF-2.0",
    "isc": "ISC", "isc license": "ISC", "isc license (iscl)": "ISC", "zlib": "Zlib",
    "public domain": "LicenseRef-Public-Domain", "cc0": "CC0-1.0", "cc0-1.0": "CC0-1.0",
    "cc0 1.0 universal (cc0 1.0) public domain dedication": "CC0-1.0", "unlicense": "Unlicense",
    "the unlicense (unlicense)": "Unlicense",
    "mpl-2.0": "MPL-2.0", "mpl 2.0": "MPL-2.0", "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
    "gpl": "GPL-2.0-or-later", "gplv2": "GPL-2.0-only", "gplv3": "GPL-3.0-only",
    "gnu general public license v2 (gplv2)": "GPL-2.0-only",
    "gnu general public license v3 (gplv3)": "GPL-3.0-only",
    "gnu general public license v3 or later (gplv3+)": "GPL-3.0-or-later",
    "gnu general public license v2 or later (gplv2+)": "GPL-2.0-or-later",
    "gnu lesser general public license v3 (lgplv3)": "LGPL-3.0-only",
    "gnu lesser general public license v2 or later (lgplv2+)": "LGPL-2.1-or-later",
    "gnu affero general public license v3": "AGPL-3.0-only",
}
_SPDX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")


def normalize_license(text: str | None) -> str:
    """An SPDX expression for a declared license: an expression as is, a known name or trove
    classifier mapped, anything else NOASSERTION."""
    if not text or not text.strip():
        return NOASSERTION
    text = " ".join(text.split())
    if text.startswith("License :: "):                       # a trove classifier
        text = text.rsplit(" :: ", 1)[-1]
    alias = _ALIASES.get(text.lower())
    if alias:
        return alias
    try:
        _parse(_tokens(text))
    except ValueError:
        return NOASSERTION
    return text


def distribution_license(metadata) -> str:
    """The SPDX license of an installed distribution from its core metadata (PEP 639 first)."""
    return license_from_metadata(metadata)[0]


def license_from_metadata(metadata) -> tuple[str, str]:
    """(SPDX expression, where it was read) from core metadata: `License-Expression`, then a short
    `License` field, then the `License ::` classifiers, then a license text pasted into the
    `License` field; (NOASSERTION, why) when none of them names one."""
    if metadata.get("License-Expression"):
        spdx = normalize_license(metadata["License-Expression"])
        if spdx != NOASSERTION:
            return spdx, "License-Expression"
    declared = (metadata.get("License") or "").strip()
    if declared and "\n" not in declared and len(declared) < 80:
        spdx = normalize_license(declared)
        if spdx != NOASSERTION:
            return spdx, "License field"
    found = sorted({(normalize_license(c), c) for c in metadata.get_all("Classifier") or []
                    if c.startswith("License :: ") and c != "License :: OSI Approved"})
    classifiers = sorted({spdx for spdx, _ in found if spdx != NOASSERTION})
    if classifiers:                     # several classifiers: the distribution offers a choice
        return " OR ".join(classifiers), "classifier " + "; ".join(c for spdx, c in found if spdx != NOASSERTION)
    if declared:
        spdx = identify_license(declared)
        if spdx != NOASSERTION:
            return spdx, "License field (license text)"
    return NOASSERTION, "no license in the metadata"


def names_bsd_without_clauses(metadata) -> bool:
    """True when the metadata says "BSD" (License field or classifier) but not which BSD: the
    alias above guesses BSD-3-Clause, and a license file, where there is one, can say."""
    if metadata.get("License-Expression"):
        return False
    declared = (metadata.get("License") or "").strip().lower()
    classifiers = {c for c in metadata.get_all("Classifier") or [] if c.startswith("License :: ")} - {"License :: OSI Approved"}
    return declared in ("bsd", "bsd license") or (not declared and classifiers == {"License :: OSI Approved :: BSD License"})


# -- SPDX expressions: id, AND, OR, WITH, parentheses (https://spdx.github.io/spdx-spec/v2.3/SPDX-license-expressions/)

def _tokens(text: str) -> list[str]:
    return re.findall(r"\(|\)|[^\s()]+", text)


def _parse(tokens: list[str]):
    """A tree ("OR"|"AND", [children]) or a license id; raises ValueError when malformed."""
    pos = 0

    def expr(op: str):          # OR binds looser than AND: an OR of ANDs of atoms
        nonlocal pos
        operand = (lambda: expr("AND")) if op == "OR" else atom
        parts = [operand()]
        while pos < len(tokens) and tokens[pos].upper() == op:
            pos += 1
            parts.append(operand())
        return parts[0] if len(parts) == 1 else (op, parts)

    def atom():
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError("expression ends early")
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            node = expr("OR")
            if pos >= len(tokens) or tokens[pos] != ")":
                raise ValueError("unbalanced parenthesis")
            pos += 1
            return node
        if not _SPDX_ID.match(tok) or tok.upper() in ("AND", "OR", "WITH"):
            raise ValueError(f"not a license id: {tok}")
        if pos < len(tokens) and tokens[pos].upper() == "WITH":   # an exception keeps the base license
            pos += 2
        return tok

    node = expr("OR")
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos]!r}")
    return node


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str


@dataclass(frozen=True, kw_only=True)
class Policy:
    """What may be trained on: licenses allowed, and sources and content hashes denied by name."""
    allow: frozenset[str] = PERMISSIVE
    deny_sources: frozenset[str] = field(default_factory=frozenset)
    deny_hashes: frozenset[str] = field(default_factory=frozenset)   # sha256 of a file's bytes

    @classmethod
    def permissive(cls, **kw) -> Policy:
        return cls(**kw)

    def license_allowed(self, spdx: str) -> bool:
        if spdx == NOASSERTION:
            return False
        try:
            node = _parse(_tokens(spdx))
        except ValueError:
            return False

        def ok(n) -> bool:
            if isinstance(n, str):
                return n in self.allow
            op, parts = n
            return any(map(ok, parts)) if op == "OR" else all(map(ok, parts))
        return ok(node)

    def decide_source(self, source_id: str, spdx: str, per_record: str = "") -> Verdict:
        """A source by its id and license; `per_record` names the field each of its records
        gives its own license in, decided record by record (`decide_license`) instead."""
        if source_id in self.deny_sources:
            return Verdict(False, f"source {source_id} is on the deny list")
        if per_record:
            return Verdict(True, f"each record decided by the license in its {per_record!r} field")
        return self.decide_license(spdx)

    def decide_license(self, spdx: str) -> Verdict:
        if spdx == NOASSERTION:
            return Verdict(False, "license unknown or missing")
        if self.license_allowed(spdx):
            return Verdict(True, f"license {spdx} allowed by policy")
        kind = "copyleft license" if any(COPYLEFT.match(t) for t in _tokens(spdx)) else "license"
        return Verdict(False, f"{kind} {spdx} not allowed by policy")

    def decide_hash(self, sha256: str) -> Verdict:
        if sha256 in self.deny_hashes:
            return Verdict(False, f"content hash {sha256[:16]}… is on the deny list")
        return Verdict(True, "content hash not denied")

    def to_dict(self) -> dict:
        return {"allow": sorted(self.allow), "deny_sources": sorted(self.deny_sources),
                "deny_hashes": sorted(self.deny_hashes)}
