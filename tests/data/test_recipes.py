"""A corpus recipe file with a value of the wrong type or range is one error naming the key (with
its table) and the file, never a traceback, and never a value quietly taken apart (a license
written as a string is not a set of its letters)."""

import pytest

from lamina.data import data_recipe
from lamina.errors import LaminaError


@pytest.mark.parametrize("body, message", [
    ("[config]\nseed = 1.5", "config.seed = 1.5 (from {path}): must be an integer"),
    ("[config]\nnear_dedup = 1", "config.near_dedup = 1 (from {path}): must be true or false"),
    ("[config]\ntokenizer = 8192", "config.tokenizer = 8192 (from {path}): must be a string"),
    ("[config]\nvalidation_fraction = nan", "config.validation_fraction = nan (from {path}): must be a finite number"),
    ('[config]\nweights = {shakespeare = "2"}', "config.weights = {'shakespeare': '2'} (from {path}): "
                                                "must be a table of finite numbers"),
    ('[policy]\nallow = "MIT"', "policy.allow = 'MIT' (from {path}): must be a list of strings"),
    ("[policy]\ndeny_hashes = [1]", "policy.deny_hashes = [1] (from {path}): must be a list of strings"),
    ('sources = "shakespeare"', "sources = 'shakespeare' (from {path}): must be a list of strings"),
    ("config = 3", "config = 3 (from {path}): must be a table"),
    ('[[folders]]\npath = "d"\nid = "d"\nlicense = 1', "folders.license = 1 (from {path}): must be a string"),
])
def test_a_bad_value_in_a_data_recipe_names_the_key_and_the_file(tmp_path, body, message):
    path = tmp_path / "mine.toml"
    path.write_text(f'name = "mine"\n{body}\n')
    with pytest.raises(LaminaError) as e:
        data_recipe(str(path))
    assert str(e.value) == message.replace("{path}", str(path))


def test_a_value_in_range_is_checked_by_the_build_config_and_still_names_the_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[config]\nvalidation_fraction = 1.5\n")
    with pytest.raises(LaminaError, match=rf"^{path} \[config\]: validation_fraction 1.5 must be in"):
        data_recipe(str(path))
    path.write_text('[[folders]]\npath = "d"\nid = "d"\nlicense = "MIT"\nlicence = "MIT"\n')
    with pytest.raises(LaminaError, match=r"unknown \[folders\] keys \['licence'\]"):
        data_recipe(str(path))


def test_a_good_recipe_reads_its_lists_as_sets(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('sources = ["shakespeare"]\n[config]\nseed = 3\nweights = {shakespeare = 2}\n'
                    '[policy]\nallow = ["MIT"]\ndeny_hashes = ["ab"]\n')
    recipe = data_recipe(str(path))
    assert recipe.sources == ("shakespeare",) and recipe.config.seed == 3
    assert recipe.config.weights == {"shakespeare": 2}
    assert recipe.policy.allow == frozenset({"MIT"}) and recipe.policy.deny_hashes == frozenset({"ab"})
