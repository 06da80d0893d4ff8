"""Multi-token prediction (DeepSeek-V3): the weighted loss equal to a plain recomputation of every
depth, the modules kept through the Hugging Face layouts that transformers loads around them,
DeepSeek-V3's checkpoint size, and self-speculative decoding whose output is plain greedy's,
whose cached drafts are the modules' uncached predictions, and whose drafts a trained model
accepts."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lamina.checkpoint import write_hf
from lamina.checkpoint.hf import read_hf
from lamina.errors import LaminaError
from lamina.model import (KVCache, ModelConfig, Transformer, count_params, init_weights, preset, weights,
                          without_mtp)
from lamina.model.rope import rope_cos_sin
from lamina.serve.speculative import AheadDrafter, Speculation, speculate

SMALL = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=50, max_seq_len=128)
KINDS = {"dense": {}, "moe": dict(n_experts=4, n_active_experts=2),
         "mla": dict(kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12)}


def small(depth: int, kind: str = "dense", seed: int = 0, std: float = 0.1) -> Transformer:
    return init_weights(Transformer(ModelConfig(**SMALL, **KINDS[kind], mtp_depth=depth)), seed=seed, std=std)


def module_by_hand(model: Transformer, depth: int, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Depth `depth`'s output from its parts: the embedding first, both normed, projected, then
    the pre-norm residual block; positions from 0."""
    m = model.mtp[depth]
    x = m.eh_proj(torch.cat((m.enorm(model.tok_embeddings(tokens)), m.hnorm(h)), dim=-1))
    cos, sin = rope_cos_sin(model.inv_freq, torch.arange(tokens.shape[1])[None], x.dtype)
    x = x + m.attention(m.attention_norm(x), cos, sin)
    return x + m.feed_forward(m.ffn_norm(x))


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_weighted_loss_equals_each_depth_recomputed_on_its_own_shorter_rows(kind):
    """Depth k sees token i + k at position i and predicts token i + k + 1: recomputed on rows
    cut to the positions that have such a token, through the logits and F.cross_entropy."""
    torch.manual_seed(0)
    model = small(2, kind)
    x = torch.randint(0, 50, (3, 21))                                # tokens 0..T
    tokens, targets = x[:, :-1], x[:, 1:].clone()
    targets[1, 5] = -100                                             # a token no depth is scored on
    loss = model(tokens, targets=targets, mtp_weight=0.3)
    with torch.no_grad():
        h = model.body(tokens)
        main = F.cross_entropy(model.logits(h).flatten(0, 1), targets.flatten())
        depths, T = [], tokens.shape[1]
        for k in (1, 2):
            h = module_by_hand(model, k - 1, h[:, :T - k], x[:, k:T])     # positions 0..T-k-1
            logits = model.logits(model.mtp[k - 1].head_norm(h))
            depths.append(F.cross_entropy(logits.flatten(0, 1), targets[:, k:].flatten(), ignore_index=-100))
    torch.testing.assert_close(model.last_losses, torch.stack([main, *depths]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss.detach(), main + 0.3 * torch.stack(depths).mean(), rtol=1e-5, atol=1e-5)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if n.startswith("mtp.") and not n.endswith("feed_forward.gate.weight"))


def test_without_a_weight_the_modules_cost_nothing_and_inference_never_runs_them():
    model = small(1)
    tokens = torch.randint(0, 50, (2, 12))
    plain = Transformer(ModelConfig(**SMALL))
    plain.load_state_dict(without_mtp(model.config, weights(model))[1])
    with torch.no_grad():
        assert torch.equal(model(tokens, targets=tokens), plain(tokens, targets=tokens))
        assert torch.equal(model(tokens), plain(tokens))


def test_deepseek_v3s_checkpoint_holds_685b_with_its_module():
    v3 = preset("deepseek-v3")
    assert v3.mtp_depth == 1 and round(count_params(v3) / 1e9) == 671
    # "685B, 671B of the main model and 14B of the MTP module" (its model card): the module with its
    # copies of the embedding and head is 13.5B, the whole 684.5B (685B with FP8 block scales)
    module = count_params(v3, mtp=True) - count_params(v3) + 2 * v3.vocab_size * v3.dim
    assert round(module / 1e9, 1) == 13.5 and round((count_params(v3) + module) / 1e9, 1) == 684.5
    c = ModelConfig(**SMALL, **KINDS["moe"], mtp_depth=2)
    assert count_params(c, mtp=True) == sum(p.numel() for p in Transformer(c).parameters())


@pytest.mark.parametrize("kind,cls", [("dense", "LlamaForCausalLM"), ("moe", "MixtralForCausalLM"),
                                      ("mla", "DeepseekV3ForCausalLM")])
def test_the_modules_survive_the_hf_layout_that_transformers_loads_around(tmp_path, kind, cls):
    import transformers
    c = small(1, kind).config
    if kind == "mla":
        c = c.replace(n_experts=4, n_active_experts=2, n_shared_experts=1, router="sigmoid", expert_bias=True,
                      dense_layers=1)
    model = init_weights(Transformer(c), seed=1, std=0.1).eval()
    write_hf(tmp_path / "m", c, weights(model))
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["num_nextn_predict_layers"] == 1 and saved["architectures"] == [cls]
    theirs = getattr(transformers, cls).from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    tokens = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), theirs(tokens).logits, rtol=1e-5, atol=1e-5)
    ck = read_hf(tmp_path / "m")
    ours = weights(model)
    assert ck.config == c and ck.weights.keys() == ours.keys()
    assert all(torch.equal(ck.weights[k], v) for k, v in ours.items())
    # transformers drops the modules and keeps the key: what it saves has none
    theirs.save_pretrained(tmp_path / "theirs")
    assert read_hf(tmp_path / "theirs").config.mtp_depth == 0


def test_formats_without_a_place_for_the_modules_refuse_them_until_dropped(tmp_path):
    from lamina.checkpoint import write_gguf, write_meta
    from lamina.tokenizer import load_tokenizer
    model = small(1)
    with pytest.raises(LaminaError, match="drop-mtp"):
        write_gguf(tmp_path / "m.gguf", model.config, weights(model), load_tokenizer("llama-3"))
    with pytest.raises(LaminaError, match="multi-token prediction"):
        write_meta(tmp_path / "meta", model.config, weights(model))
    config, dropped = without_mtp(model.config, weights(model))
    write_meta(tmp_path / "meta", config, dropped)
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("depth", [1, 3])
def test_self_speculative_decoding_is_plain_greedy(kind, depth):
    """Whatever the (random) modules propose, the tokens are those of re-running the whole
    sequence each step, to the stop token."""
    model = small(depth, kind, std=0.3).eval()
    prompt = [1, 5, 9, 3, 7, 7, 2]
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(24):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    stats = Speculation()
    assert list(speculate(model, prompt, 24, n_tokens=depth, stats=stats)) == seq[len(prompt):]
    assert 0 < stats.proposed <= depth * stats.forwards
    stop = seq[len(prompt) + 10]
    first = seq.index(stop, len(prompt))
    assert list(speculate(model, prompt, 24, n_tokens=depth, stop_token_ids=(stop,))) == seq[len(prompt):first]


def test_the_first_modules_cached_drafts_are_its_uncached_predictions():
    """At every step the first module proposes what it predicts over the whole sequence so far,
    uncached: the draft caches hold what a plain forward computes."""
    model = small(1, "moe", std=0.3).eval()
    seq = [3, 1, 4, 1, 5, 9, 2, 6]
    cache = KVCache(model.config, 1, 64, layers=3)
    drafter = AheadDrafter(model, cache, 64, 1)
    with torch.no_grad():
        positions = torch.arange(len(seq) - 1)
        mask = positions[None] <= positions[:, None]
        drafter.checked(0, model.body(torch.tensor([seq[:-1]]), positions[None], cache, positions, mask[None, None])[0])
        for step in range(6):
            proposal = drafter.propose(seq)
            h = model.body(torch.tensor([seq[:-1]]))
            _, normed = model.predict_ahead(0, h, torch.tensor([seq[1:]]), torch.arange(len(seq) - 1)[None])
            assert proposal == [int(model.logits(normed[0, -1]).argmax())]
            seq.append(proposal[0] if step % 2 else (proposal[0] + 1) % 50)      # accepted, then not
            n = len(seq) - 2
            at = torch.tensor([n])
            drafter.checked(n, model.body(torch.tensor([[seq[-2]]]), at[None], cache, at,
                                          torch.ones(1, 1, 1, n + 1, dtype=torch.bool))[0])


def test_a_trained_model_accepts_its_own_drafts():
    """Trained on a rule that fixes every next token (3x + 1 mod 50), two modules learn the tokens
    two and three ahead: most drafts are kept and a forward yields well over two tokens."""
    torch.manual_seed(0)
    model = small(2, seed=2, std=0.05).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def rows(n: int, length: int = 33) -> torch.Tensor:
        seqs = [torch.randint(0, 50, (n,))]
        for _ in range(length - 1):
            seqs.append((3 * seqs[-1] + 1) % 50)
        return torch.stack(seqs, 1)

    for _ in range(150):
        batch = rows(16)
        loss = model(batch[:, :-1], targets=batch[:, 1:], mtp_weight=1.0)
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    assert model.last_losses.max() < 0.1
    rule = rows(1, 30)[0].tolist()
    stats = Speculation()
    assert list(speculate(model, rule[:6], 24, n_tokens=2, stats=stats)) == rule[6:]
    assert stats.acceptance > 0.8 and stats.forwards <= 24 / 2.5


def test_speculation_needs_modules_and_a_sane_count():
    with pytest.raises(LaminaError, match="this model has none"):
        list(speculate(Transformer(ModelConfig(**SMALL)), [1, 2], 4))
    with pytest.raises(LaminaError, match="1 to 1"):
        list(speculate(small(1), [1, 2], 4, n_tokens=2))


def test_training_logs_each_depth_and_resumes_bit_exact(shakespeare_corpus, tmp_path, capsys):
    """`lamina train` with a module: the next-token loss logged as `loss`, the module's as
    `mtp_loss_1`, its FLOPs counted; three steps and three more after --resume equal six straight.
    Then the command line: `generate --speculate 1` prints what plain greedy prints, `info` counts
    the module, `convert --drop-mtp` is what Meta's layout needs."""
    from safetensors.torch import load_file

    from lamina.train import train, train_recipe

    def config(out, steps, *more):
        return train_recipe("debug", ["model_overrides.mtp_depth=1", 'schedule="constant"', "warmup_steps=0",
                                      "save_every=3", "eval_every=100", "log_every=1", *more],
                            data=str(shakespeare_corpus), out=str(out), max_steps=steps)
    straight = train(config(tmp_path / "straight", 6), progress=False)
    train(config(tmp_path / "resumed", 3), progress=False)
    resumed = train(config(tmp_path / "resumed", 6), resume=True, progress=False)
    a, b = (load_file(r.checkpoint / "model.safetensors") for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_hf(straight.checkpoint).config.mtp_depth == 1
    logged = [json.loads(line) for line in (straight.run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "mtp_loss_1" in r]
    assert len(steps) == 6 and all(r["mtp_loss_1"] > r["loss"] * 0.5 for r in steps)
    without = train(config(tmp_path / "without", 1, "mtp_weight=0"), progress=False)
    per_token = [json.loads((r.checkpoint / "lamina.json").read_text())["made_by"]["compute"]["flops_per_token"]
                 for r in (straight, without)]
    assert per_token[0] > per_token[1]
    assert not any("mtp_loss_1" in line for line in (without.run / "metrics.jsonl").read_text().splitlines())
    from lamina.cli import main
    model = str(straight.checkpoint)
    capsys.readouterr()
    outs = []
    for more in ([], ["--speculate", "1"]):
        assert main(["generate", model, "To be", "--temperature", "0", "--max-new-tokens", "16", *more]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and len(outs[0]) > len("To be")
    assert main(["info", model, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mtp_parameters"] > 0
    assert main(["convert", model, str(tmp_path / "meta"), "--to", "meta"]) != 0
    assert "drop" in capsys.readouterr().err
    assert main(["convert", model, str(tmp_path / "meta"), "--to", "meta", "--drop-mtp"]) == 0
    assert (tmp_path / "meta" / "params.json").is_file()

