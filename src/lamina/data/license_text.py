"""Name a license from its text: the LICENSE, COPYING or licenses/ files a distribution ships.

The rule, stated so it can be checked: the text is normalised (lower case, "licence" spelled
"license", every run of punctuation and whitespace one space, comment markers gone), then a
license is identified when **every** distinctive clause of its template appears in it: the
clauses that only its text has (MIT's grant "free of charge to any person obtaining a copy" with
its notice condition; BSD's two redistribution conditions, plus the no-endorsement clause that
makes it BSD-3-Clause; the Apache-2.0 title with its terms heading or its standard notice; the
GNU titles with their dates, or the "as published by the Free Software Foundation" notices ...).
A file may hold several licenses (bundled components): the result is all of them joined with
AND, in the order they appear, so a GPL text next to an MIT one still blocks a permissive policy.
Conservative throughout: a text in which nothing is identified, or that names a license or a
restriction that no license identified in it accounts for (GPL, LGPL, MPL, EPL, CNRI,
share-alike, non-commercial, the BSD advertising clause, ... see HINTS), is NOASSERTION, which
no policy allows."""

from __future__ import annotations

import re
from dataclasses import dataclass

NOASSERTION = "NOASSERTION"


def normalize_text(text: str) -> str:
    """Lower case, British spelling folded, punctuation, quotes and comment markers to spaces."""
    text = text.lower().replace("licence", "license").replace("&", " and ")
    return " ".join(re.findall(r"[a-z0-9]+", text))


@dataclass(frozen=True)
class Template:
    id: str                      # SPDX id
    clauses: tuple[str, ...]     # normalised phrases (regular expressions) that must all appear
    unless: str = ""             # ...and this phrase must appear fewer times than the first clause


_BSD_BASE = ("redistribution and use in source and binary forms with or without modification are permitted "
             "provided that the following conditions are met",
             "redistributions of source code must retain the above copyright notice",
             "redistributions in binary form must reproduce the above copyright notice")
_BSD_ENDORSE = "may (?:not )?be used to endorse or promote products derived from this software without specific prior written permission"
_ANY_WARRANTY = "all warranties with regard to this software including all implied warranties of merchantability and fitness"
_GNU_VERBATIM = "everyone is permitted to copy and distribute verbatim copies of this license document but changing it is not allowed"

# Several templates may name one id: a full text, and the standard notice that points to it.
TEMPLATES = (
    Template("MIT", ("permission is hereby granted free of charge to any person obtaining a copy of this software",
                     "the above copyright notice and this permission notice shall be included in all copies or "
                     "substantial portions of the software",
                     "the software is provided as is without warranty of any kind")),
    Template("BSD-3-Clause", _BSD_BASE[:1] + (_BSD_ENDORSE,) + _BSD_BASE[1:]),
    Template("BSD-2-Clause", _BSD_BASE, unless=_BSD_ENDORSE),
    Template("ISC", ("permission to use copy modify and (or )?distribute this software for any purpose with or without "
                     "fee is hereby granted provided that the above copyright notice and this permission notice "
                     "appear in all copies", _ANY_WARRANTY)),
    Template("0BSD", ("permission to use copy modify and or distribute this software for any purpose with or without "
                      "fee is hereby granted the software is provided as is", _ANY_WARRANTY)),
    Template("Apache-2.0", ("apache license version 2 0 january 2004",
                            "terms and conditions for use reproduction and distribution",
                            "grant of patent license")),
    Template("Apache-2.0", ("licensed under the apache license version 2 0 the license you may not use this file "
                            "except in compliance with the license",)),
    # the PSF agreement alone is PSF-2.0; with the BeOpen and CNRI agreements it is the Python license stack
    Template("Python-2.0", ("python software foundation", "psf hereby grants licensee a nonexclusive royalty free world wide license",
                            "beopen hereby grants licensee a non exclusive royalty free world wide license",
                            "cnri hereby grants licensee a nonexclusive royalty free world wide license")),
    Template("PSF-2.0", ("psf hereby grants licensee a nonexclusive royalty free world wide license", "python software foundation"),
             unless="beopen hereby grants licensee"),
    Template("Zlib", ("this software is provided as is without any express or implied warranty in no event will the "
                      "authors be held liable for any damages arising from the use of this software",
                      "the origin of this software must not be misrepresented",
                      "altered source versions must be plainly marked as such")),
    Template("Unlicense", ("this is free and unencumbered software released into the public domain",
                           "anyone is free to copy modify publish use compile sell or distribute this software")),
    Template("CC0-1.0", ("cc0 1 0 universal", "statement of purpose",
                         "affirmer hereby overtly fully permanently irrevocably and unconditionally waives")),
    Template("MPL-2.0", ("mozilla public license version 2 0", "1 1 contributor means each individual or legal entity",
                         "covered software")),
    Template("MPL-2.0", ("this source code form is subject to the terms of the mozilla public license v 2 0",)),
    Template("GPL-2.0-only", ("gnu general public license version 2 june 1991", _GNU_VERBATIM,
                              "terms and conditions for copying distribution and modification")),
    Template("GPL-3.0-only", ("gnu general public license version 3 29 june 2007", _GNU_VERBATIM,
                              "the gnu general public license is a free copyleft license for software")),
    Template("LGPL-2.1-only", ("gnu lesser general public license version 2 1 february 1999", _GNU_VERBATIM)),
    Template("LGPL-3.0-only", ("gnu lesser general public license version 3 29 june 2007", _GNU_VERBATIM,
                               "incorporates the terms and conditions of version 3 of the gnu general public license")),
    Template("AGPL-3.0-only", ("gnu affero general public license version 3 19 november 2007", _GNU_VERBATIM)),
)
# "... under the terms of the GNU [Lesser] General Public License as published by the Free Software
# Foundation; either version 2.1 of the License, or (at your option) any later version."
_GNU_NOTICE = re.compile(r"gnu (lesser |library |affero )?general public license as published by the free software "
                         r"foundation (?:either )?version (2 1|2|3)(?: of the license)?( or at your option any later version)?")
_GNU_FAMILY = {"": "GPL", "lesser ": "LGPL", "library ": "LGPL", "affero ": "AGPL"}
# the sample notice in a GNU license's own appendix is template text, not the author's choice
_GNU_APPENDIX = "how to apply these terms to your new"

# Names of licenses, and restrictions, that a text may mention: each must be accounted for by a
# license identified in the same text (a copyleft text mentions the GPL; the Python stack names
# CNRI), else we are not sure what the file grants. None: nothing we name accounts for it.
_COPYLEFT_NAMED = r"^(A?GPL|LGPL|MPL)"
HINTS = {
    "general public license version": _COPYLEFT_NAMED, "general public license as published": _COPYLEFT_NAMED,
    "lesser general public license": _COPYLEFT_NAMED, "library general public license": _COPYLEFT_NAMED,
    "affero general public license": _COPYLEFT_NAMED, "mozilla public license": _COPYLEFT_NAMED,
    "cnri": r"^Python-2\.0$", "beopen": r"^Python-2\.0$",
    "eclipse public license": None, "european union public license": None,
    "common development and distribution license": None, "server side public license": None,
    "sharealike": None, "share alike": None, "noncommercial": None, "commons clause": None,
    "all advertising materials mentioning features or use of this software": None,
}


def _found(template: Template, text: str) -> int | None:
    """Where the template's first clause starts, if every clause is in `text`."""
    first = None
    for clause in template.clauses:
        m = re.search(clause, text)
        if m is None:
            return None
        first = m.start() if first is None else first
    if template.unless and len(re.findall(template.unless, text)) >= len(re.findall(template.clauses[0], text)):
        return None
    return first


def _gnu_notices(text: str) -> list[tuple[int, str]]:
    head = text.split(_GNU_APPENDIX, 1)[0]
    found = []
    for m in _GNU_NOTICE.finditer(head):
        family, version, later = _GNU_FAMILY[m.group(1) or ""], m.group(2).replace(" ", "."), m.group(3)
        version = "2.0" if version == "2" and family == "LGPL" else version   # the Library GPL, version 2
        version = f"{version}.0" if "." not in version else version
        found.append((m.start(), f"{family}-{version}-{'or-later' if later else 'only'}"))
    return found


def identify_license(text: str) -> str:
    """The SPDX expression of a license text (several licenses joined with AND), else NOASSERTION."""
    norm = normalize_text(text)
    hits = [(at, t.id) for t in TEMPLATES if (at := _found(t, norm)) is not None] + _gnu_notices(norm)
    ids: list[str] = []
    for _, spdx in sorted(hits):
        if spdx not in ids:
            ids.append(spdx)
    for spdx in list(ids):   # a notice's "or later" says more than the bare text of the same version
        if spdx.endswith("-or-later") and spdx.replace("-or-later", "-only") in ids:
            ids.remove(spdx.replace("-or-later", "-only"))
    if not ids:
        return NOASSERTION
    for hint, accounted_by in HINTS.items():
        if f" {hint} " in f" {norm} " and not (accounted_by and any(re.match(accounted_by, i) for i in ids)):
            return NOASSERTION
    return " AND ".join(ids)


def license_from_files(files: list[tuple[str, str]]) -> tuple[str, str]:
    """(SPDX expression, where it was read) from a distribution's license files, given as (name,
    text): every file must be identified, else NOASSERTION naming the one that was not; the
    licenses of all of them apply together (AND), in file order."""
    if not files:
        return NOASSERTION, "no license in the metadata, and no license file"
    ids: list[str] = []
    for name, text in files:
        spdx = identify_license(text)
        if spdx == NOASSERTION:
            return NOASSERTION, f"no license in the metadata; license file {name} not recognised"
        ids += [i for i in spdx.split(" AND ") if i not in ids]
    return " AND ".join(ids), "license file " + ", ".join(name for name, _ in files)
