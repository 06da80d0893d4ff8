"""The mixture-of-experts feed-forward: routing equal to transformers' DeepSeek-V3 router (sigmoid,
groups, the balancing bias, route scale) and Mixtral's (softmax top-k); grouped experts equal to
one matmul per expert, gradients included; Mixtral's Hugging Face layout both ways with equal
logits; published parameter counts; and auxiliary-loss-free balancing that evens out a skewed
router while leaving the mixing weights alone."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lamina.model import ModelConfig, Transformer, count_params, init_weights, preset, weights
from lamina.model.moe import MoEFeedForward, route, update_expert_bias

from .conftest import lamina_loads_theirs, transformers_loads_ours

SMALL = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, vocab_size=300, max_seq_len=128,
             rope_theta=10000.0)


def test_sigmoid_group_routing_equals_deepseek_v3s_router():
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
    theirs = DeepseekV3TopkRouter(DeepseekV3Config(hidden_size=64, n_routed_experts=16, num_experts_per_tok=4,
                                                   n_group=4, topk_group=2, routed_scaling_factor=2.5,
                                                   norm_topk_prob=True))
    torch.manual_seed(0)
    theirs.weight.data.normal_(0, 0.5)
    theirs.e_score_correction_bias.normal_(0, 0.1)
    c = ModelConfig(**SMALL, n_experts=16, n_active_experts=4, router="sigmoid", expert_groups=4, topk_groups=2,
                    route_scale=2.5, expert_bias=True)
    x = torch.randn(50, 64)
    _, w_ref, idx_ref = theirs(x)
    w, idx = route(F.linear(x, theirs.weight), c, theirs.e_score_correction_bias)
    order_ref, order = idx_ref.sort(-1), idx.sort(-1)
    assert torch.equal(order.values, order_ref.values)
    torch.testing.assert_close(w.gather(1, order.indices), w_ref.gather(1, order_ref.indices))


def test_grouped_experts_equal_one_matmul_per_expert_gradients_included():
    c = ModelConfig(**SMALL, n_experts=6, n_active_experts=2, n_shared_experts=1, expert_ffn_dim=32)
    torch.manual_seed(1)
    moe = MoEFeedForward(c)
    for p in moe.parameters():
        p.data.normal_(0, 0.2)
    x = torch.randn(3, 7, 64, requires_grad=True)
    y = moe(x)
    # the reference: every token through its experts one at a time
    flat = x.reshape(-1, 64)
    w, idx = route(F.linear(flat.float(), moe.gate.weight), c, None)
    ref = torch.stack([sum(w[n, j] * (F.silu(flat[n] @ moe.experts.w1[e].T) * (flat[n] @ moe.experts.w3[e].T))
                           @ moe.experts.w2[e].T for j, e in enumerate(idx[n].tolist())) for n in range(len(flat))])
    ref = ref + moe.shared(flat)
    torch.testing.assert_close(y.reshape(-1, 64), ref, rtol=1e-5, atol=1e-5)
    # a decode step's handful of rows goes through the experts one pair at a time: the same
    torch.testing.assert_close(moe.experts.few(flat[:3], w[:3], idx[:3]), (ref - moe.shared(flat))[:3],
                               rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), [x, moe.experts.w1, moe.gate.weight])
    grads_ref = torch.autograd.grad((ref.reshape_as(y) * g).sum(), [x, moe.experts.w1, moe.gate.weight])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_mixtrals_layout_both_ways_with_transformers_logits(tmp_path):
    from transformers import MixtralConfig, MixtralForCausalLM
    c = preset("debug-moe")
    model = init_weights(Transformer(c), seed=3, std=0.1).eval()
    transformers_loads_ours(model, MixtralForCausalLM, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == ["MixtralForCausalLM"]
    # and what transformers writes, lamina reads
    ck = lamina_loads_theirs(MixtralForCausalLM(MixtralConfig(
        vocab_size=300, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=5, num_experts_per_tok=2, max_position_embeddings=128)),
        tmp_path / "theirs")
    assert (ck.config.n_experts, ck.config.n_active_experts, ck.config.expert_ffn_dim) == (5, 2, 48)


def test_a_layout_missing_an_expert_or_unlike_mixtral_is_one_clear_error(tmp_path):
    from safetensors.torch import load_file, save_file

    from lamina.checkpoint import write_hf
    from lamina.checkpoint.hf import read_hf
    from lamina.errors import LaminaError
    c = preset("debug-moe")
    write_hf(tmp_path / "m", c, weights(init_weights(Transformer(c))))
    tensors = load_file(tmp_path / "m" / "model.safetensors")
    del tensors["model.layers.1.block_sparse_moe.experts.2.w3.weight"]
    save_file(tensors, tmp_path / "m" / "model.safetensors")
    with pytest.raises(LaminaError, match=r"experts\.\*\.w3\.weight lacks expert 2"):
        read_hf(tmp_path / "m")
    shared = c.replace(n_shared_experts=1)
    with pytest.raises(LaminaError, match="shared experts, which Mixtral's layout"):
        write_hf(tmp_path / "s", shared, weights(init_weights(Transformer(shared))))
    assert not (tmp_path / "s").exists()


def test_parameter_counts_equal_the_published_ones():
    c = preset("mixtral-8x7b")
    assert round(count_params(c) / 1e9, 1) == 46.7 and round(count_params(c, active=True) / 1e9, 1) == 12.9
    small = preset("debug-moe")
    assert count_params(small) == sum(p.numel() for p in Transformer(small).parameters())


def test_the_bias_balances_a_skewed_router_and_never_touches_the_weights():
    c = ModelConfig(**SMALL, n_experts=8, n_active_experts=2, router="sigmoid", expert_bias=True)
    torch.manual_seed(0)
    moe = MoEFeedForward(c).train()
    moe.gate.weight.data.normal_(0, 0.05)
    moe.gate.weight.data[0] += 0.2                          # expert 0 draws most tokens
    for p in moe.experts.parameters():
        p.data.normal_(0, 0.1)
    tokens = torch.randn(16, 32, 64) + 1.0

    def ratio() -> float:
        with torch.no_grad():
            moe(tokens)
        load = moe.load.clone()
        moe.load.zero_()
        return float(load.max() / load.mean())
    before = ratio()
    for _ in range(300):
        with torch.no_grad():
            moe(tokens)
        update_expert_bias(moe, rate=1e-3)
    assert before > 2 and ratio() < 1.3
    # the bias chose the experts; the mixing weights are the plain scores of those chosen
    flat = tokens.reshape(-1, 64)
    scores = F.linear(flat, moe.gate.weight).sigmoid()
    w, idx = route(F.linear(flat, moe.gate.weight), c, moe.expert_bias)
    chosen = scores.gather(1, idx)
    torch.testing.assert_close(w, chosen / chosen.sum(-1, keepdim=True))
    assert not torch.equal(idx.sort(-1).values, route(F.linear(flat, moe.gate.weight), c, None)[1].sort(-1).values)


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_the_sequence_balance_loss_is_deepseek_v3s_formula_and_evens_out_a_skewed_router(router):
    """Eqs. 17-20 of DeepSeek-V3 written out with loops over rows and experts; then the loss alone,
    through the router's gradient, evens out a router skewed to one expert."""
    c = ModelConfig(**SMALL, n_experts=8, n_active_experts=2, router=router, seq_aux_loss=1.0)
    torch.manual_seed(0)
    moe = MoEFeedForward(c).train()
    moe.gate.weight.data.normal_(0, 0.05)
    moe.gate.weight.data[0] += 0.1
    tokens = torch.randn(4, 32, 64) + 0.3
    moe(tokens)
    logits = F.linear(tokens.reshape(-1, 64), moe.gate.weight).view(4, 32, 8)
    _, chosen = route(logits.reshape(-1, 8), c, None)
    chosen = chosen.view(4, 32, 2)
    scores = logits.softmax(-1) if router == "softmax" else logits.sigmoid()
    rows = []
    for b in range(4):
        total = 0.0
        for i in range(8):
            f = 8 / (2 * 32) * sum(int(i in chosen[b, t].tolist()) for t in range(32))
            p = sum(float(scores[b, t, i] / scores[b, t].sum()) for t in range(32)) / 32
            total += f * p
        rows.append(total)
    assert moe.aux_loss.item() == pytest.approx(sum(rows) / 4, rel=1e-5)
    assert moe.aux_loss.item() > 1.2 and float(moe.load.max() / moe.load.mean()) > 3     # skewed: 1 is even
    opt = torch.optim.SGD([moe.gate.weight], lr=0.3)
    for _ in range(200):
        moe.load.zero_()
        moe(tokens)
        moe.aux_loss.backward()
        opt.step()
        opt.zero_grad()
    assert moe.aux_loss.item() < 1.05 and float(moe.load.max() / moe.load.mean()) < 1.3


def test_training_balances_and_resumes_bit_exact_bias_included(shakespeare_corpus, tmp_path):
    """`lamina train` on debug-moe with the balancing bias: loads and the bias's spread logged;
    three steps, then three more after --resume, equal six straight, the bias included."""
    from safetensors.torch import load_file

    from lamina.train import train, train_recipe

    def config(out, steps):
        return train_recipe("debug", ['model="debug-moe"', "model_overrides.expert_bias=true", "expert_bias_rate=0.01",
                                      'schedule="constant"', "warmup_steps=0", "save_every=3", "eval_every=100",
                                      "log_every=1"], data=str(shakespeare_corpus), out=str(out), max_steps=steps)
    straight = train(config(tmp_path / "straight", 6), progress=False)
    train(config(tmp_path / "resumed", 3), progress=False)
    resumed = train(config(tmp_path / "resumed", 6), resume=True, progress=False)
    a, b = (load_file(r.checkpoint / "model.safetensors") for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    bias = a["model.layers.0.block_sparse_moe.gate.e_score_correction_bias"]
    assert 0 < bias.abs().max() <= 6 * 0.01 + 1e-6            # six steps of at most the rate each
    logged = [json.loads(line) for line in (straight.run / "metrics.jsonl").read_text().splitlines()]
    loads = [r["expert_load_max_over_mean"] for r in logged if "expert_load_max_over_mean" in r]
    assert len(loads) == 6 and all(1 <= x <= 2 for x in loads)
    assert [r["expert_bias_spread"] for r in logged if "expert_bias_spread" in r][-1] > 0
    assert (straight.run / "loss.png").is_file()          # with a second panel: the load and the bias
    made_by = json.loads((straight.checkpoint / "lamina.json").read_text())["made_by"]
    assert made_by["active_parameters"] < made_by["parameters"]


def test_the_engine_decodes_a_mixture_of_experts_as_the_uncached_forward(greedy_equals_uncached):
    """Batched greedy decoding through the KV-cache engine equals re-running the whole sequence
    each step, for prompts of different lengths."""
    greedy_equals_uncached(init_weights(Transformer(preset("debug-moe")), seed=5, std=0.1).eval())


@pytest.mark.parametrize("experts", [0, 8], ids=["qwen3", "qwen3-moe"])
def test_qwen3s_layouts_both_ways_with_transformers_logits(tmp_path, experts):
    """Per-head query/key norms before RoPE (Qwen3), and Qwen3-MoE's softmax-routed experts after
    a dense first layer (`mlp_only_layers`), unnormalised top-k weights from transformers' side."""
    import transformers
    c = ModelConfig(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96, vocab_size=300,
                    max_seq_len=128, rope_theta=1e6, norm_eps=1e-6, qk_norm=True, n_experts=experts,
                    expert_ffn_dim=32 if experts else 0, dense_layers=1 if experts else 0)
    model = init_weights(Transformer(c), seed=3, std=0.1).eval()
    for name, p in model.named_parameters():
        if "norm" in name:
            p.data.normal_(1, 0.1)                          # norms that do something
    cls = transformers.Qwen3MoeForCausalLM if experts else transformers.Qwen3ForCausalLM
    assert transformers_loads_ours(model, cls, tmp_path / "ours") == c
    config_cls = transformers.Qwen3MoeConfig if experts else transformers.Qwen3Config
    extra = dict(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=False) if experts else {}
    ck = lamina_loads_theirs(cls(config_cls(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                            max_position_embeddings=128, **extra)), tmp_path / "theirs")
    assert ck.config.qk_norm and ck.config.n_experts == (6 if experts else 0)


def test_qwen3_30b_a3b_counts_equal_the_published_ones():
    c = preset("qwen3-30b-a3b")
    assert round(count_params(c) / 1e9, 1) == 30.5
    assert int(count_params(c, active=True) / 1e8) / 10 == 3.3      # 3.35B; the model card truncates to 3.3B
