"""A training config from user input is checked field by field: a value of the wrong type or range
is one `lamina: error:` line naming the field, the value and where it was written (the recipe
file, a flag, or the override as typed), never a traceback and never a silent surprise."""

import dataclasses
import datetime
import math
import subprocess
import sys
import tomllib
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.cli import main
from lamina.errors import LaminaError
from lamina.fields import InvalidField, fits
from lamina.train import TrainConfig, train_recipe

LAMINA = [sys.executable, "-m", "lamina.cli"]

# (override as typed, the value as shown, what is wrong): the list, and their neighbours
BAD_OVERRIDES = [
    ("seq_len=1.5", "1.5", "must be an integer"),
    ("max_steps=true", "True", "must be an integer"),           # a bool is an int in Python; not here
    ("lr=nan", "nan", "must be a finite number"),
    ("lr=inf", "inf", "must be a finite number"),
    ("lr=true", "True", "must be a finite number"),
    ('lr="abc"', "'abc'", "must be a finite number"),
    ("lr=abc", "'abc'", "must be a finite number"),              # not TOML: read as a plain string
    ("lr=0", "0", "must be positive"),
    ("betas=[1]", "[1]", "must be a list of 2 finite numbers"),
    ("betas=[0.9, 0.95, 0.99]", "[0.9, 0.95, 0.99]", "must be a list of 2 finite numbers"),
    ("betas=[1.0, 0.9]", "(1.0, 0.9)", "each must be in [0, 1)"),
    ('samples="once upon"', "'once upon'", "must be a list of strings"),
    ('optimizer="sgd"', "'sgd'", "must be one of adamw, muon"),
    ("tensorboard=1", "1", "must be true or false"),
    ("model_overrides=3", "3", "must be a table"),
    ("seed=-1", "-1", "must not be negative"),
    ("decay_fraction=0", "0", "must be in (0, 1]"),
    ("model_overrides.dim=1.5", "1.5", "must be an integer"),
    ("model_overrides.wings=2", "2", "not a ModelConfig field"),
]


def _key(override: str) -> str:
    return override.partition("=")[0]


@pytest.mark.parametrize("override, shown, problem", BAD_OVERRIDES)
def test_a_bad_override_is_one_line_naming_the_key_and_the_command_line(tmp_path, capsys, override, shown, problem):
    code = main(["train", "debug", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run"), override])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    said = f"{_key(override)} = {shown} (from the command line: {override}): {problem}"
    assert err.startswith(f"lamina: error: {said}"), err
    assert not (tmp_path / "run").exists()


def test_the_lamina_command_says_it_in_one_line_without_a_traceback(tmp_path):
    result = subprocess.run([*LAMINA, "train", "debug", "--data", str(tmp_path), "seq_len=1.5"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == "lamina: error: seq_len = 1.5 (from the command line: seq_len=1.5): must be an integer\n"


@pytest.mark.parametrize("line, key, shown, problem", [
    ("seq_len = 1.5", "seq_len", "1.5", "must be an integer"),
    ("max_steps = true", "max_steps", "True", "must be an integer"),
    ("lr = nan", "lr", "nan", "must be a finite number"),
    ('lr = "abc"', "lr", "'abc'", "must be a finite number"),
    ("betas = [1]", "betas", "[1]", "must be a list of 2 finite numbers"),
    ('samples = ["a", 2]', "samples", "['a', 2]", "must be a list of strings"),
    ("[model_overrides]\nn_layers = 0", "model_overrides.n_layers", "0", "must be between 1 and"),
])
def test_a_bad_value_in_a_recipe_file_names_the_key_and_the_file(tmp_path, line, key, shown, problem):
    recipe = tmp_path / "mine.toml"
    recipe.write_text(f'model = "debug"\n{line}\n')
    with pytest.raises(LaminaError) as e:
        train_recipe(str(recipe))
    assert str(e.value).startswith(f"{key} = {shown} (from {recipe}): {problem}")


def test_a_bad_flag_is_named_as_the_flag(tmp_path):
    with pytest.raises(InvalidField, match=r"^max_steps = 0 \(from --max-steps\): must be positive$"):
        train_recipe("debug", data=str(tmp_path), max_steps=0)


def test_the_last_word_on_a_key_is_the_one_blamed(tmp_path):
    recipe = tmp_path / "mine.toml"
    recipe.write_text('model = "debug"\nseq_len = 1.5\n[model_overrides]\ndim = 64\n')
    assert train_recipe(str(recipe), ["seq_len=32"]).seq_len == 32         # the override mends the file
    with pytest.raises(LaminaError, match=r"^model_overrides.n_heads = 'x' \(from the command line: "):
        train_recipe(str(recipe), ["seq_len=32", 'model_overrides.n_heads="x"'])
    with pytest.raises(LaminaError, match=r"^unknown settings \['learning_rate'\] \(from the command line: "
                                          r"learning_rate=3\); known: "):
        train_recipe("debug", ["learning_rate=3"])


def test_values_of_the_right_kind_are_taken_as_toml_gives_them():
    config = train_recipe("debug", ["lr=1", "betas=[0.8, 0.9]", 'samples=["To be", ""]', "max_steps=7",
                                    'optimizer="muon"', "model_overrides.dim=128", "tensorboard=false"])
    assert (config.lr, config.betas, config.samples, config.max_steps) == (1, (0.8, 0.9), ("To be", ""), 7)
    assert config.optimizer == "muon" and config.model_overrides == {"dim": 128} and config.tensorboard is False


def _toml(value) -> str:
    """A value written as TOML (inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or c in '"\\\x7f' else c for c in value) + '"'
    if isinstance(value, (datetime.date, datetime.time)):       # datetime is a date
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    return "{" + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + "}"


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
toml_values = st.recursive(
    st.integers(0, 4096) | st.floats(0, 1) | st.integers(-2**63, 2**63 - 1) | st.floats() | st.booleans() | _text
    | st.datetimes() | st.dates() | st.times() | st.sampled_from(["adamw", "cosine", "debug", "cuda", "auto", ""]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=8)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from([f.name for f in dataclasses.fields(TrainConfig)]), value=toml_values)
def test_any_toml_value_for_any_field_is_a_config_or_one_clear_error(key, value):
    tomllib.loads(f"v = {_toml(value)}")            # the override below is TOML, not a plain string
    try:
        config = train_recipe("debug", [f"{key}={_toml(value)}"])
    except LaminaError as e:
        message = str(e)
        assert message.startswith(key) and "(from the command line: " in message and "\n" not in message
    else:
        assert fits(getattr(config, key), typing.get_type_hints(TrainConfig)[key])
