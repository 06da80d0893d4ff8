import torch

from lamina.model import KVCache, Transformer, init_weights, preset


def _model(**changes):
    return init_weights(Transformer(preset("debug").replace(**changes)), seed=0).eval()


@torch.no_grad()
def test_kv_cache_decode_equals_full_forward():
    model = _model()
    tokens = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    full = model(tokens)                                                      # (B, T, V)
    S = 32
    cache = KVCache(model.config, 2, S)
    slots = torch.arange(S)
    valid = torch.zeros(2, S, dtype=torch.bool)
    steps = []
    # prefill 10 tokens, then one token at a time
    valid[:, :10] = True
    mask = (slots[None, :] <= torch.arange(10)[:, None]) & valid[:, None]     # (B, T, S)
    steps.append(model(tokens[:, :10], torch.arange(10).expand(2, 10), cache, slots[:10], mask[:, None]))
    for t in range(10, 24):
        valid[:, t] = True
        steps.append(model(tokens[:, t:t + 1], torch.full((2, 1), t), cache, slots[t:t + 1],
                           valid[:, None, None, :]))
    incremental = torch.cat(steps, dim=1)
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_the_output_layer_on_the_body_last_position_equals_the_forward():
    model = _model()
    tokens = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    hidden = model.body(tokens)
    assert hidden.shape == (2, 9, model.config.dim)
    logits = model.logits(hidden[:, -1])
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, model(tokens)[:, -1])


def test_tied_embeddings_share_one_tensor():
    model = _model(tie_embeddings=True)
    assert model.output.weight is model.tok_embeddings.weight
    untied = _model(tie_embeddings=False)
    assert untied.output.weight is not untied.tok_embeddings.weight


def test_init_is_deterministic_for_a_seed():
    a, b = _model(), _model()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
