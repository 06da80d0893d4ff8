"""A config field's type, its choices, its comment and its default are read from the class itself:
the type checks the value (one error naming the field), the comment and default become `--help`."""

import math
from dataclasses import dataclass, field
from typing import Literal

import pytest

from lamina.errors import LaminaError
from lamina.fields import InvalidField, check_fields, choices, comments, default, described, fits
from lamina.serve import SamplingParams
from lamina.train import TrainConfig


@dataclass(frozen=True)
class Knobs:
    steps: int = 1
    scale: float = 1.0
    ceiling: float = field(default=math.inf, metadata={"finite": False})   # inf: no ceiling

    def __post_init__(self) -> None:
        check_fields(self)


def test_train_config_choices_come_from_its_annotations():
    assert choices(TrainConfig) == {
        "optimizer": ("adamw", "muon"), "schedule": ("cosine", "wsd", "constant"),
        "device": ("auto", "cpu", "cuda"), "dtype": ("auto", "float32", "bfloat16"),
        "compile": ("auto", "on", "off"), "parallel": ("ddp", "fsdp")}
    with pytest.raises(LaminaError, match=r"^optimizer = 'sgd': must be one of adamw, muon$"):
        TrainConfig(optimizer="sgd")
    assert TrainConfig(schedule="wsd", parallel="fsdp").schedule == "wsd"


def test_a_field_is_documented_by_its_comment_and_its_default_read_from_the_class():
    assert comments(Knobs)["ceiling"] == "inf: no ceiling"
    assert "greedy" in comments(SamplingParams)["temperature"]
    assert "max_new_tokens" in comments(SamplingParams) and "__post_init__" not in comments(SamplingParams)
    assert default(SamplingParams, "top_p") == SamplingParams().top_p
    assert default(TrainConfig, "model_overrides") == {}


@pytest.mark.parametrize("hint, good, bad", [
    (int, [0, -3, 2**70], [True, 1.0, "1", None]),                       # a bool is an int in Python; not here
    (float, [0, 1.5, -2, 1e308], [True, math.nan, math.inf, -math.inf, "1.5", None]),
    (bool, [True, False], [0, 1, "true"]),
    (str, ["", "x"], [1, None, b"x", ["x"]]),
    (tuple[float, float], [[0.9, 0.95], (1, 2)], [[1], [1, 2, 3], "ab", [1, "2"], [True, 1]]),
    (tuple[str, ...], [[], ("a", "b"), ["a"]], ["ab", [1], {"a"}]),      # a string is not a list of its letters
    (frozenset[str], [["a"], frozenset({"a"}), []], ["MIT", [1]]),
    (dict, [{}, {"a": [1]}], [[], "x"]),
    (dict[str, float], [{"a": 1, "b": 0.5}], [{"a": "x"}, {"a": math.nan}, {1: 1.0}]),
    (Literal["adamw", "muon"], ["adamw"], ["sgd", 1, None]),
    (Literal[0, 1], [0, 1], [True, False, 0.0, "0"]),                     # True == 1, but it is not the choice
    (int | None, [None, 3], [1.5, True, "3"]),
])
def test_a_value_fits_its_annotation_by_type_length_and_finiteness(hint, good, bad):
    assert all(fits(v, hint) for v in good), [v for v in good if not fits(v, hint)]
    assert not any(fits(v, hint) for v in bad), [v for v in bad if fits(v, hint)]


def test_a_type_is_said_the_way_a_recipe_writes_it():
    assert described(tuple[float, float])[0] == "a list of 2 finite numbers"
    assert described(tuple[str, ...])[0] == "a list of strings"
    assert described(dict[str, int])[0] == "a table of integers"
    assert described(int | None)[0] == "an integer or none"
    assert described(Literal["cpu", "cuda"])[0] == "one of cpu, cuda"
    assert described(float, finite=False)[0] == "a number"


def test_a_config_checks_its_fields_and_names_the_first_that_is_wrong():
    assert Knobs(ceiling=math.inf).ceiling == math.inf          # this field says it may be infinite
    with pytest.raises(InvalidField, match=r"^steps = True: must be an integer$"):
        Knobs(steps=True)
    with pytest.raises(InvalidField, match=r"^scale = nan: must be a finite number$"):
        Knobs(scale=math.nan)
    error = InvalidField("steps", "x" * 1000, "must be an integer").came_from("from r.toml", "config.")
    assert str(error).startswith("config.steps = 'xxx") and str(error).endswith("(from r.toml): must be an integer")
    assert len(str(error)) < 120                                # a huge value is cut short
