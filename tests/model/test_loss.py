"""The fused head + cross-entropy (`model(tokens, targets=...)`) against the plain way: logits from
the model, then `F.cross_entropy`. Same loss and gradients, with ignored targets, tied and untied
heads, several chunks, bf16 autocast, and without autograd."""

import pytest
import torch
import torch.nn.functional as F

from lamina.model import Transformer, init_weights, preset
from lamina.model import loss as loss_module


def model_and_batch(tie: bool, vocab: int = 512):
    config = preset("debug").replace(tie_embeddings=tie, vocab_size=vocab)
    model = init_weights(Transformer(config), seed=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, vocab, (3, 50), generator=g)
    y = torch.randint(0, vocab, (3, 50), generator=g)
    y[0, :7] = -100                    # prompt tokens of a fine-tuning example: not trained on
    y[2, -3:] = -100
    return model, x, y


def grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("tie", [True, False])
def test_fused_loss_and_gradients_equal_the_plain_ones(tie, monkeypatch):
    # 64-row chunks: the 150 tokens take three, the last one short.
    monkeypatch.setitem(loss_module.CHUNK_BYTES, "cpu", 64 * 4 * 512)
    monkeypatch.setattr(loss_module, "MIN_ROWS", 64)
    model, x, y = model_and_batch(tie)
    plain = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    fused = model(x, targets=y)
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
    want, got = grads(model, plain), grads(model, fused)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_fused_loss_under_bf16_autocast_matches_the_plain_one():
    model, x, y = model_and_batch(tie=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
        fused = model(x, targets=y)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, plain, rtol=1e-3, atol=1e-3)
    want, got = grads(model, plain), grads(model, fused)
    for name in want:
        assert got[name].dtype == torch.float32
        scale = float(want[name].abs().max())
        assert float((got[name] - want[name]).abs().max()) <= 0.03 * scale, name


def test_without_autograd_only_the_loss_is_computed():
    model, x, y = model_and_batch(tie=False)
    with torch.no_grad():
        fused = model(x, targets=y)
        plain = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    assert not fused.requires_grad
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)


def test_all_targets_ignored_gives_nan_like_cross_entropy():
    model, x, y = model_and_batch(tie=True)
    y = torch.full_like(y, -100)
    assert torch.isnan(model(x, targets=y))
    assert torch.isnan(F.cross_entropy(model(x).flatten(0, 1), y.flatten()))


@pytest.mark.parametrize("chunk", [7, 64, 4096])   # many chunks, a ragged last one, one chunk
def test_target_logprobs_equal_log_softmax_and_argmax(chunk, monkeypatch):
    monkeypatch.setattr(loss_module, "VOCAB_CHUNK", chunk)
    torch.manual_seed(0)
    h, weight = torch.randn(50, 16), torch.randn(300, 16)
    logits = h @ weight.T
    targets = torch.randint(0, 300, (50,))
    targets[:10] = logits[:10].argmax(dim=1)                  # some targets are the argmax
    logp, greedy = loss_module.linear_target_logprobs(h, weight, targets)
    ref = F.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
    assert torch.allclose(logp, ref, atol=1e-5, rtol=0)
    assert torch.equal(greedy, logits.argmax(dim=1) == targets) and greedy[:10].all()


def test_target_logprobs_score_several_targets_of_one_row(monkeypatch):
    # rows shared by several targets (an item's endings all score their first token at the
    # context's last position) and a row no target uses
    monkeypatch.setattr(loss_module, "VOCAB_CHUNK", 64)
    torch.manual_seed(1)
    h, weight = torch.randn(6, 16), torch.randn(300, 16)
    logits = h @ weight.T
    rows = torch.tensor([0, 0, 0, 2, 5, 2, 1])
    targets = torch.tensor([3, 299, 0, 7, 150, 7, 64])
    targets[6] = logits[1].argmax()
    logp, greedy = loss_module.linear_target_logprobs(h, weight, targets, rows)
    ref = F.log_softmax(logits, dim=-1)[rows, targets]
    assert torch.allclose(logp, ref, atol=1e-5, rtol=0) and logp[3] == logp[5]
    assert torch.equal(greedy, logits.argmax(dim=1)[rows] == targets) and greedy[6]


def test_target_logprobs_break_ties_as_argmax_does(monkeypatch):
    # the largest logit appears three times, in different chunks: argmax takes the first
    monkeypatch.setattr(loss_module, "VOCAB_CHUNK", 2)
    h = torch.ones(2, 1)
    weight = torch.tensor([[0.0], [2.0], [1.0], [2.0], [2.0]])
    logp, greedy = loss_module.linear_target_logprobs(h, weight, torch.tensor([1, 3]))
    assert greedy.tolist() == [True, False]
    assert logp[0] == pytest.approx(logp[1]) == pytest.approx(2 - torch.logsumexp(weight[:, 0], 0).item())
