"""LoRA adapters, against PEFT itself: PEFT loads lamina's adapters onto transformers' Llama with
the same logits and lamina loads PEFT's; merged equals unmerged; only adapters train; with the
adapters off the model is its base."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaForCausalLM

from lamina.checkpoint import read_hf, write_hf
from lamina.cli import main
from lamina.errors import LaminaError
from lamina.model import ModelConfig, expected_shapes, from_state_dict
from lamina.post.lora import (LoRAConfig, LoRALinear, adapter_parameters, adapters_disabled, apply_lora,
                              load_adapter, lora_modules, merge_lora, save_adapter)

TOLERANCE = 1e-4   # max abs logit difference in float32
# grouped-query heads, so that wq and wk differ in rows and the RoPE row order of both shows
CONFIG = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=96,
                     max_seq_len=128, bos_token_id=0, eos_token_id=1)
TOKENS = torch.randint(CONFIG.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))


def random_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: 1 + 0.1 * torch.randn(shape, generator=g) if name.endswith("norm.weight")
            else 0.15 * torch.randn(shape, generator=g)
            for name, shape in expected_shapes(CONFIG).items()}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A base model directory, written by lamina, that transformers loads."""
    return write_hf(tmp_path_factory.mktemp("base") / "model", CONFIG, random_weights())


def lamina_model(base):
    return from_state_dict(CONFIG, read_hf(base).weights)


def hf_model(base) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(base, dtype=torch.float32).eval()


def randomize_adapters_(model, seed: int = 2):
    """Non-zero B (a fresh adapter's is zero), so that the adapters change the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def adapted(base, config: LoRAConfig):
    model = lamina_model(base)
    apply_lora(model, config)
    return randomize_adapters_(model).eval()


@torch.no_grad()
def logits(model) -> torch.Tensor:
    return model(TOKENS)


@pytest.mark.parametrize("config", [
    LoRAConfig(r=4, alpha=8),
    LoRAConfig(r=2, alpha=5, targets=("wq", "wk", "w2"), rslora=True),
], ids=["every-projection", "some-projections-rslora"])
def test_peft_loads_our_adapter_with_equal_logits(tmp_path, base, config):
    ours = adapted(base, config)
    save_adapter(ours, tmp_path / "adapter", base_ref=str(base))
    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert written["peft_type"] == "LORA" and written["base_model_name_or_path"] == str(base)
    theirs = PeftModel.from_pretrained(hf_model(base), tmp_path / "adapter").eval()
    assert (logits(ours) - theirs(TOKENS).logits).abs().max() <= TOLERANCE
    with adapters_disabled(ours):     # and the adapter is not a no-op that would pass anyway
        assert (logits(ours) - theirs(TOKENS).logits).abs().max() > 100 * TOLERANCE


def test_we_load_a_peft_adapter_with_equal_logits(tmp_path, base):
    theirs = get_peft_model(hf_model(base), LoraConfig(
        r=4, lora_alpha=16, lora_dropout=0.1, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    theirs.save_pretrained(tmp_path / "adapter")
    ours = lamina_model(base)
    params = load_adapter(ours, tmp_path / "adapter")
    assert len(params) == 2 * 7 * CONFIG.n_layers
    config = next(iter(lora_modules(ours).values())).config
    assert (config.r, config.alpha, config.dropout) == (4, 16.0, 0.1)
    assert (logits(ours.eval()) - theirs.eval()(TOKENS).logits).abs().max() <= TOLERANCE


def test_merged_equals_unmerged(base):
    model = adapted(base, LoRAConfig(r=4, alpha=8))
    before = logits(model)
    merge_lora(model)
    assert not lora_modules(model)
    assert set(model.state_dict()) == set(lamina_model(base).state_dict())
    assert (logits(model) - before).abs().max() <= 1e-5


def test_lora_merge_command_writes_a_plain_model_with_the_adapted_logits(tmp_path, base):
    model = adapted(base, LoRAConfig(r=4, alpha=8, targets=("wv", "w1", "w3")))
    save_adapter(model, tmp_path / "adapter", base_ref=str(base))
    assert main(["lora", "merge", str(base), str(tmp_path / "adapter"), str(tmp_path / "merged")]) == 0
    merged = read_hf(tmp_path / "merged")
    assert merged.metadata["made_by"]["command"] == "lamina lora merge"
    assert (logits(from_state_dict(merged.config, merged.weights)) - logits(model)).abs().max() <= TOLERANCE


def test_only_adapters_train(base):
    model = lamina_model(base)
    params = apply_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.1))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name in model.state_dict() if name.endswith(("lora_A", "lora_B"))}
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}
    before = {name: t.clone() for name, t in model.state_dict().items()}
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for _ in range(2):    # B starts at zero, so A's gradient is zero until B has moved once
        optimizer.zero_grad()
        model(TOKENS[:, :-1], targets=TOKENS[:, 1:]).backward()   # the fused chunked loss
        optimizer.step()
    changed = {name for name, t in model.state_dict().items() if not torch.equal(t, before[name])}
    assert changed == trainable


def test_adapters_disabled_gives_the_base_model(base):
    model = adapted(base, LoRAConfig(r=4, alpha=8))
    with_adapters = logits(model)
    with adapters_disabled(model):
        assert torch.equal(logits(model), logits(lamina_model(base)))
    assert torch.equal(logits(model), with_adapters)


@pytest.mark.slow
def test_compiled_model_trains_with_adapters_and_switches_them_off(base):
    model = adapted(base, LoRAConfig(r=4, alpha=8))
    compiled = torch.compile(model)
    loss = compiled(TOKENS[:, :-1], targets=TOKENS[:, 1:])
    assert torch.allclose(loss, model(TOKENS[:, :-1], targets=TOKENS[:, 1:]), atol=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in adapter_parameters(model))
    with adapters_disabled(compiled), torch.no_grad():
        assert torch.allclose(compiled(TOKENS), logits(lamina_model(base)), atol=1e-5)


def test_a_fresh_adapter_starts_as_its_base_and_inits_a_as_peft_does(base):
    model = lamina_model(base)
    apply_lora(model, LoRAConfig(r=8, alpha=16))
    assert torch.equal(logits(model.eval()), logits(lamina_model(base)))
    wq = model.layers[0].attention.wq
    assert isinstance(wq, LoRALinear) and wq.weight is model.layers[0].attention.wq.weight
    bound = 1 / CONFIG.dim ** 0.5        # kaiming-uniform with a = sqrt(5), nn.Linear's default
    assert wq.lora_A.abs().max() <= bound and wq.lora_A.abs().max() > 0.8 * bound
    assert not wq.lora_B.any()


def test_unsupported_or_mismatched_adapters_are_refused_in_one_line(tmp_path, base):
    model = adapted(base, LoRAConfig(r=4, alpha=8))
    save_adapter(model, tmp_path / "adapter", base_ref=str(base))
    config_file = tmp_path / "adapter" / "adapter_config.json"
    raw = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**raw, "use_dora": True}))
    with pytest.raises(LaminaError, match="use_dora = true is not supported"):
        load_adapter(lamina_model(base), tmp_path / "adapter")
    config_file.write_text(json.dumps(raw))
    other = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, vocab_size=96)
    with pytest.raises(LaminaError, match="an adapter of another base model"):
        load_adapter(from_state_dict(other, {k: torch.zeros(s) for k, s in expected_shapes(other).items()}),
                     tmp_path / "adapter")
    with pytest.raises(LaminaError, match="not a PEFT adapter folder"):
        load_adapter(lamina_model(base), tmp_path)
    with pytest.raises(LaminaError, match="already has LoRA adapters"):
        apply_lora(model, LoRAConfig())
    with pytest.raises(LaminaError, match="targets"):
        LoRAConfig(targets=("wq", "output"))
