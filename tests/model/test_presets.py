import pytest

from lamina.model import ModelConfig, PRESETS, count_params, preset
from lamina.model import Transformer

# Published sizes, as printed: LLaMA paper table 2 (6.7B, 13.0B, 32.5B, 65.2B), Llama 2 paper
# (7B, 13B), Llama 3 / 3.2 model cards (8.03B, 70.6B, 1.23B, 3.21B), SmolLM2 model card (135M).
PUBLISHED = {
    "llama-7b": "6.7e9", "llama-13b": "13.0e9", "llama-33b": "32.5e9", "llama-65b": "65.2e9",
    "llama-2-7b": "7e9", "llama-2-13b": "13e9",
    "llama-3-8b": "8.03e9", "llama-3-70b": "70.6e9", "llama-3.1-8b": "8.03e9",
    "llama-3.2-1b": "1.23e9", "llama-3.2-3b": "3.21e9", "smollm2-135m": "135e6",
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_preset_parameter_count_matches_published_figure(name):
    mantissa, exponent = PUBLISHED[name].split("e")
    decimals = len(mantissa.partition(".")[2])
    unit = 10 ** (int(exponent) - decimals)          # one step of the last printed digit
    assert abs(count_params(preset(name)) - float(PUBLISHED[name])) < unit


def test_exact_counts_of_released_checkpoints():
    # the tensor totals of the released weights (safetensors headers of the HF repos)
    assert count_params(preset("llama-2-7b")) == 6_738_415_616
    assert count_params(preset("llama-2-70b")) == 68_976_648_192
    assert count_params(preset("llama-3-8b")) == 8_030_261_248
    assert count_params(preset("llama-3.2-1b")) == 1_235_814_400
    assert count_params(preset("smollm2-135m")) == 134_515_008


@pytest.mark.parametrize("name", PRESETS)
def test_count_params_agrees_with_the_module(name):
    import torch
    with torch.device("meta"):
        model = Transformer(PRESETS[name])
    assert sum(p.numel() for p in model.parameters()) == count_params(PRESETS[name], mtp=True)


def test_debug_preset_is_tiny():
    assert count_params(preset("debug")) < 200_000


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="does not divide"):
        ModelConfig(dim=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="not divisible"):
        ModelConfig(dim=65, n_heads=4)
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("llama-9000b")
