"""Weight-only quantization (lamina.model.quant): codes within half a step of every weight, the
fused decode kernel equal to the eager matmul, a quantized model decoding through the engine
(eager and compiled) as its own uncached forward does, and a real model's logits kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lamina.model import Transformer, init_weights, preset
from lamina.model.quant import QuantizedLinear, quantize_model, quantized_bytes, quantized_size

from .conftest import engine_greedy_equals_uncached

SETTINGS = [(8, 0), (8, 32), (4, 32)]   # int8 per row, int8 in llama.cpp's Q8_0 blocks, int4 in groups


@pytest.mark.parametrize("bits, group", SETTINGS)
def test_codes_stand_within_half_a_step_of_every_weight(bits, group):
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(0))
    q = QuantizedLinear.from_weight(w, bits, group)
    step = q.scales.repeat_interleave(q.group, dim=1)          # (64, 96): each weight's step
    assert ((q.dequantize() - w).abs() <= step / 2 + 1e-6).all()
    if bits == 4:
        assert q.qweight.shape == (32, 96) and q.qweight.dtype == torch.uint8   # two weights a byte
        codes = q.codes()
        assert codes.min() >= 0 and codes.max() <= 15
    x = torch.randn(5, 96)
    torch.testing.assert_close(q(x), F.linear(x, q.dequantize()))


@pytest.mark.slow
@pytest.mark.parametrize("bits, group", SETTINGS)
def test_the_fused_decode_kernel_computes_the_eager_product(bits, group):
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(1))
    q = QuantizedLinear.from_weight(w, bits, group)
    x = torch.randn(1, 1, 96)
    fused = torch.compile(q, dynamic=False, fullgraph=True)(x)
    torch.testing.assert_close(fused, F.linear(x, q.dequantize()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_a_quantized_model_decodes_through_the_engine_as_its_own_forward(method):
    model = quantize_model(init_weights(Transformer(preset("debug")), seed=3, std=0.2), method)
    quantized = {name for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert {"output", "layers.0.attention.wq", "layers.1.feed_forward.w1"} <= quantized
    # int4's groups of 32 do not divide the debug model's 176 hidden channels: w2 stays in floats
    assert ("layers.1.feed_forward.w2" in quantized) == (method == "int8")
    engine_greedy_equals_uncached(model)


@pytest.mark.slow
def test_a_quantized_model_decodes_the_same_compiled(greedy_equals_uncached):
    model = quantize_model(init_weights(Transformer(preset("debug")), seed=3, std=0.2), "int4")
    greedy_equals_uncached(model, compile=True)


def test_quantizing_keeps_a_real_models_loss_and_shrinks_it():
    """SmolLM2-135M on a real text: int8 keeps the float model's loss within 0.05 nats, int4
    (groups of 32) within 0.15; the bytes of weights shrink as the estimate made before loading says."""
    import lamina
    text = ("The llama is a domesticated South American camelid, widely used as a meat and pack animal "
            "by Andean cultures since the pre-Columbian era. Llamas are social animals and live with "
            "others as a herd.")

    def loss(llm) -> float:
        ids = torch.tensor([llm.tokenizer.encode(text)])
        with torch.no_grad():
            return float(F.cross_entropy(llm.engine.model(ids)[0, :-1], ids[0, 1:]))

    base = lamina.load("smollm2-135m-instruct")
    c, n_params = base.engine.config, sum(p.numel() for p in base.engine.model.parameters())
    reference, floats = loss(base), quantized_bytes(base.engine.model)
    for method, within in (("int8", 0.05), ("int4", 0.15)):
        llm = lamina.load("smollm2-135m-instruct", quantize=method)
        assert abs(loss(llm) - reference) < within, method
        size = quantized_bytes(llm.engine.model)
        assert size < floats * (0.55 if method == "int8" else 0.45)   # the float embedding stays (a fifth of it)
        estimate = quantized_size(n_params, c.vocab_size * c.dim, c.tie_embeddings, 4, method)
        assert abs(estimate - size) / size < 0.05, (method, estimate, size)


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("heads", [0, 4])
def test_llama_cpp_blocks_become_codes_that_stand_for_the_same_weights(kind, heads):
    """gguf's own quantizer makes the blocks; lamina's codes dequantize to exactly what gguf
    dequantizes them to (rows permuted from interleaved RoPE pairs to halves where asked)."""
    import gguf
    import numpy as np

    from lamina.checkpoint.gguf import Blocks, block_codes
    from lamina.checkpoint.layout import interleaved_to_halves
    qtype = gguf.GGMLQuantizationType[kind]
    w = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)
    data = gguf.quants.quantize(w, qtype)
    bits, codes, scales, offsets = block_codes(Blocks(qtype, data, heads))
    q = QuantizedLinear(64, 96, bits, 32)
    q.set_int8(codes, scales) if bits == 8 else q.set_int4(codes, scales, offsets)
    theirs = torch.from_numpy(gguf.quants.dequantize(data, qtype).copy())
    assert torch.equal(q.dequantize(), interleaved_to_halves(theirs, heads) if heads else theirs)


def test_a_gguf_model_quantized_to_its_own_precision_keeps_its_weights_exactly():
    """The packaged SmolLM2 GGUF is Q4_1 (and a Q8_0 embedding): loaded as int4, its projections
    take the file's codes and its head the embedding's Q8_0 ones, so the model computes what the
    float load of the same file does."""
    import lamina
    ids = torch.tensor([[1, 504, 303, 4130, 81, 314, 253, 27996, 2582, 30, 28, 5]])
    with torch.no_grad():
        floats = lamina.load("smollm2-135m-instruct").engine.model(ids)
        quantized = lamina.load("smollm2-135m-instruct", quantize="int4")
        torch.testing.assert_close(quantized.engine.model(ids), floats, rtol=1e-4, atol=1e-4)
    kinds = {(m.bits, m.group) for m in quantized.engine.model.modules() if isinstance(m, QuantizedLinear)}
    assert kinds == {(4, 32), (8, 32)}


@pytest.mark.slow
def test_two_compiled_models_in_one_process_each_decode_as_themselves():
    """Compiled decode steps skip the guards on the model's weights (a millisecond a token): each
    engine compiles a step of its own, so an int4 model after an int8 one of the same
    architecture never runs the int8 model's graph (it did: its weights are packed two rows a byte)."""
    from lamina.serve.engine import Engine
    from lamina.serve.sampling import SamplingParams
    params = SamplingParams(max_new_tokens=6, temperature=0, stop_token_ids=())
    for method in ("int8", "int4"):
        model = quantize_model(init_weights(Transformer(preset("debug")), seed=4, std=0.2), method)
        eager = list(Engine(model).generate([[1, 5, 9]], params))
        assert list(Engine(model, compile=True).generate([[1, 5, 9]], params)) == eager
