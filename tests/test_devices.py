"""Where a model runs (lamina.devices): the device people name or the one there is, the dtype that
suits it, and weights that cannot fit refused before any loads; the same from every command
that runs a model."""

from __future__ import annotations

import pytest
import torch

from lamina.cli import main
from lamina.devices import check_fits, placement, resolve_device
from lamina.errors import LaminaError
from lamina.model import count_params, preset

NO_CUDA = not torch.cuda.is_available()


def test_auto_is_the_gpu_when_one_is_visible_else_the_cpu_and_its_dtype():
    device, dtype = placement()
    assert device.type == ("cpu" if NO_CUDA else "cuda")
    assert dtype == (torch.float32 if NO_CUDA else torch.bfloat16)
    assert placement("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)
    assert placement("auto", "auto") == placement()


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a GPU")
def test_a_cuda_request_without_a_gpu_is_one_clear_error():
    with pytest.raises(LaminaError, match="no CUDA device visible.*use --device cpu"):
        resolve_device("cuda:0")


@pytest.mark.parametrize("name, says", [("tpu", "not a device"), ("cuda:x", "not a device"),
                                        ("meta", "runs models on cpu, cuda or mps")])
def test_an_unknown_device_is_one_clear_error(name, says):
    with pytest.raises(LaminaError, match=says):
        resolve_device(name)


def test_weights_that_cannot_fit_are_refused_before_loading():
    """Llama 3 70B in float32 (282 GB) on this machine's memory: the estimate says so, with what
    would help."""
    needed = count_params(preset("llama-3-70b")) * 4
    with pytest.raises(LaminaError, match=r"needs 26\d\.\d GiB .* GiB is free; try --dtype bfloat16, --quantize"):
        check_fits(needed, torch.device("cpu"), "llama-3-70b")
    check_fits(1 << 20, torch.device("cpu"), "a small model")


@pytest.mark.parametrize("command", [["generate", "smollm2-135m-instruct", "Hi"], ["chat", "smollm2-135m-instruct"],
                                     ["eval", "smollm2-135m-instruct", "--tasks", "piqa"],
                                     ["serve", "smollm2-135m-instruct", "--port", "0"]])
@pytest.mark.skipif(not NO_CUDA, reason="this machine has a GPU")
def test_every_command_that_runs_a_model_takes_a_device(capsys, command):
    assert main([*command, "--device", "cuda"]) == 1
    assert "--device cuda: this machine has no CUDA device visible" in capsys.readouterr().err


def test_generate_runs_quantized_from_the_command_line(capsys):
    args = ["generate", "smollm2-135m-instruct", "The capital of France is", "--temperature", "0",
            "--max-new-tokens", "4", "--device", "cpu"]
    assert main([*args, "--quantize", "int8"]) == 0
    assert "Paris" in capsys.readouterr().out


def test_compiled_decode_steps_are_cached_in_the_users_cache_unless_told(monkeypatch, tmp_path):
    """Between processes, compiled steps live in $XDG_CACHE_HOME/lamina/inductor (or ~/.cache),
    not inductor's /tmp default, which torch writes into the variable itself; a directory the user
    names is kept."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from lamina.serve.engine import compile_cache_dir
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert compile_cache_dir() == tmp_path / "lamina" / "inductor"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert compile_cache_dir() == tmp_path / "lamina" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache_dir() == tmp_path / "mine"
