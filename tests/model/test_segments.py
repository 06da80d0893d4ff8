"""Attention over packed rows one sequence at a time (`Segments`) computes what a block-diagonal
causal mask computes — the same hidden states and the same gradients — for rows of sequences of
mixed lengths, one filling a whole row, runs crossing nothing, and row padding."""

from __future__ import annotations

import pytest
import torch

from lamina.model import ModelConfig, Transformer, init_weights, preset
from lamina.model.segments import Segments, Sequence


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """The dense (B, 1, T, T) mask: a position sees the earlier ones of its own sequence
    (row padding sees itself only)."""
    T = segments.shape[1]
    same = segments[:, :, None] == segments[:, None, :]
    return (same & torch.ones(T, T, dtype=torch.bool).tril())[:, None]


def layout(T: int, rows: list[list[int]]) -> torch.Tensor:
    segments = torch.full((len(rows), T), -1)
    for b, lengths in enumerate(rows):
        at = 0
        for s, n in enumerate(lengths):
            segments[b, at:at + n] = s
            at += n
    return segments


@pytest.mark.parametrize("config", [
    ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=300, max_seq_len=256),
    preset("debug-mla")], ids=["grouped-query", "latent"])      # latent: values narrower than queries and keys
def test_segments_attention_equals_the_block_diagonal_mask_forward_and_backward(config):
    model = init_weights(Transformer(config), seed=3)
    T = 160
    # a full row of one sequence, then a row of one, so ids 0 meet 0 across the row boundary;
    # lengths that fall in three different groups; a row ending in padding
    segments = layout(T, [[160], [7, 90, 1, 50, 12], [130, 3]])
    tokens = torch.randint(0, 300, segments.shape, generator=torch.Generator().manual_seed(0))
    positions = torch.zeros_like(segments)
    for b in range(len(segments)):
        for s in segments[b].unique():
            where = segments[b] == s
            positions[b, where] = torch.arange(int(where.sum()))
    seg = Segments.from_ids(segments)
    assert sorted(len(g.kept) for g in seg.groups) == [1 + 3 + 7 + 12 + 50, 90, 130 + 160]   # by length, up to 64, 128, 256
    real = segments >= 0
    results = []
    for mask in (block_causal_mask(segments), seg):
        model.zero_grad()
        h = model.body(tokens, positions, mask=mask)
        (h[real] ** 2).mean().backward()
        results.append((h[real].detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (h_dense, g_dense), (h_seg, g_seg) = results
    torch.testing.assert_close(h_seg, h_dense, atol=1e-5, rtol=1e-4)
    for a, b in zip(g_seg, g_dense):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_shared_prefix_computed_once_gives_what_each_sequence_gives_with_its_own_copy():
    """GRPO's layout: a prompt once, then completions that attend to it and to themselves."""
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=300, max_seq_len=256)
    model = init_weights(Transformer(config), seed=4)
    g = torch.Generator().manual_seed(1)
    prompt, others = torch.randint(0, 300, (9,), generator=g), torch.randint(0, 300, (200,), generator=g)
    tails = [torch.randint(0, 300, (n,), generator=g) for n in (5, 60, 1)]
    # shared: the prompt, then each tail continuing it; a sequence of its own after them
    flat = torch.cat([prompt, *tails, others])[None]
    P, at = len(prompt), len(prompt)
    sequences, positions = [Sequence(range(P))], list(range(P))
    for t in tails:
        sequences.append(Sequence(range(at, at + len(t)), prefix=range(P)))
        positions += range(P, P + len(t))
        at += len(t)
    sequences.append(Sequence(range(at, at + len(others))))
    positions += range(len(others))
    layout = Segments.of(sequences)
    assert any(gr.mask is not None for gr in layout.groups) and any(gr.mask is None for gr in layout.groups)
    shared = model.body(flat, torch.tensor([positions]), mask=layout)[0]
    (shared ** 2).sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    alone, loss = [], 0.0
    for row in [prompt, *(torch.cat([prompt, t]) for t in tails), others]:
        h = model.body(row[None])[0]
        # the prompt counts once, as in the shared layout: only a tail's own positions count again
        h = h if len(alone) in (0, len(tails) + 1) else h[P:]
        alone.append(h)
        loss = loss + (h ** 2).sum()
    loss.backward()
    torch.testing.assert_close(shared, torch.cat(alone).detach(), atol=1e-5, rtol=1e-4)
    for a, b in zip(grads, [p.grad for p in model.parameters() if p.grad is not None]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
