
from lamina.data import NOASSERTION, Policy, distribution_license, normalize_license


class Meta(dict):
    def get_all(self, key):
        v = self.get(key)
        return v if isinstance(v, list) else None


def test_licenses_normalise_to_spdx():
    assert normalize_license("MIT License") == "MIT"
    assert normalize_license("License :: OSI Approved :: Apache Software License") == "Apache-2.0"
    assert normalize_license("Apache-2.0 OR BSD-2-Clause") == "Apache-2.0 OR BSD-2-Clause"
    assert normalize_license("") == NOASSERTION
    assert normalize_license("see LICENSE.txt, all rights reserved") == NOASSERTION


def test_distribution_license_prefers_license_expression_then_field_then_classifiers():
    assert distribution_license(Meta({"License-Expression": "MIT", "License": "GPL"})) == "MIT"
    assert distribution_license(Meta({"License": "BSD"})) == "BSD-3-Clause"
    assert distribution_license(Meta({"Classifier": ["License :: OSI Approved :: MIT License",
                                                    "Programming Language :: Python"]})) == "MIT"
    assert distribution_license(Meta({"License": "Copyright (c) Someone\nAll rights reserved\n"})) == NOASSERTION


def test_policy_allows_permissive_and_says_why_it_denies():
    p = Policy.permissive()
    assert p.decide_source("a", "MIT").allowed
    assert p.decide_source("a", "Apache-2.0 OR GPL-3.0-only").allowed          # a choice: take Apache
    assert p.decide_source("a", "GPL-3.0-only").reason == "copyleft license GPL-3.0-only not allowed by policy"
    assert not p.decide_source("a", "MPL-2.0 AND MIT").allowed                  # both apply: MPL blocks
    assert p.decide_source("a", NOASSERTION).reason == "license unknown or missing"
    denied = Policy.permissive(deny_sources=frozenset({"shadow-lib"}))
    assert denied.decide_source("shadow-lib", "MIT").reason == "source shadow-lib is on the deny list"
    assert not Policy.permissive(deny_hashes=frozenset({"ab" * 32})).decide_hash("ab" * 32).allowed
