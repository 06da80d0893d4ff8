"""GGUF in and out, checked against the two references for the format: the `gguf` package
(metadata, tensor types, dequantization) and llama.cpp itself (it loads what lamina writes and
computes the same logits, with Llama 3.1 RoPE scaling and grouped-query attention)."""

from __future__ import annotations

import json

import gguf
import llama_cpp
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from lamina.checkpoint import read_gguf, write_gguf
from lamina.gguf_file import read_gguf_metadata
from lamina.checkpoint.layout import halves_to_interleaved, interleaved_to_halves
from lamina.errors import LaminaError
from lamina.model import ModelConfig, RopeScaling, Transformer, from_state_dict, init_weights, weights
from lamina.serve import Engine
from lamina.serve.sampling import SamplingParams
from lamina.tokenizer import Tokenizer

Q = gguf.GGMLQuantizationType
TEXT = ("The quick brown fox jumps over the lazy dog. Sphinx of black quartz, judge my vow!\n"
        "def square(x):\n    return x * x  # 12345\n")
CONTROL = 3   # llama.cpp's token type of special tokens


def gguf_row_source(n_heads: int, head_dim: int) -> list[int]:
    """For each row of a GGUF wq/wk, the rotate-half (HF, lamina) row it holds. llama.cpp's
    converter interleaves each head's halves: GGUF row 2i+p of a head is row p*D/2+i."""
    half = head_dim // 2
    return [h * head_dim + p * half + i for h in range(n_heads) for i in range(half) for p in range(2)]


def gguf_order(name: str, w: torch.Tensor, config: ModelConfig) -> np.ndarray:
    """A lamina weight in GGUF's row order."""
    heads = {"attention.wq.weight": config.n_heads, "attention.wk.weight": config.n_kv_heads}
    for suffix, n in heads.items():
        if name.endswith(suffix):
            return w.numpy()[gguf_row_source(n, config.head_dim)]
    return w.numpy()


def gguf_name(name: str) -> str:
    """lamina (Meta) name -> GGUF name, spelled out here rather than taken from lamina's table."""
    fixed = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
             "output.weight": "output.weight"}
    if name in fixed:
        return fixed[name]
    _, i, *rest = name.split(".")
    part = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
            "attention.wo": "attn_output", "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down",
            "feed_forward.w3": "ffn_up", "attention_norm": "attn_norm", "ffn_norm": "ffn_norm"}
    return f"blk.{i}.{part['.'.join(rest[:-1])]}.weight"


def gguf_fields(path) -> tuple[dict, dict]:
    """(metadata, tensors by name) as the `gguf` package reads them."""
    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return meta, {t.name: t for t in reader.tensors}


# -- a tiny model with a real byte-level BPE tokenizer ----------------------------------------

@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([TEXT] * 8, trainer)
    return Tokenizer(backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                     chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")


def tiny(tokenizer: Tokenizer, **changes) -> ModelConfig:
    """head_dim 32 and rows of 128 or 256: every matrix splits into Q8_0's 32-value blocks."""
    base = dict(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=256, vocab_size=400,
                max_seq_len=256, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
    return ModelConfig(**base | changes)


def random_model(config: ModelConfig, seed: int = 0) -> Transformer:
    model = init_weights(Transformer(config), seed=seed, std=0.05)
    with torch.no_grad():   # norms away from 1, so a misplaced norm shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(seed))
    return model


def llama_cpp_model(path, **kw) -> llama_cpp.Llama:
    # One thread: on a small shared CPU llama.cpp's spinning worker threads cost it 10x or more.
    return llama_cpp.Llama(model_path=str(path), verbose=False, n_threads=1, n_threads_batch=1, **kw)


def logits(model: Transformer, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].numpy()


def llama_cpp_logits(path, ids: list[int]) -> np.ndarray:
    # F32 KV cache: llama.cpp's default F16 cache alone would cost ~1e-3 of the logits.
    llama = llama_cpp_model(path, logits_all=True, n_ctx=256,
                            type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    llama.eval(ids)
    return np.array(llama.scores[:len(ids)])


def relative_error(theirs: np.ndarray, ours: np.ndarray) -> float:
    return float(np.abs(theirs - ours).max() / np.abs(ours).max())


# -- reading -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_gguf(smollm2):
    return gguf_fields(smollm2.path)


def test_smollm2_gguf_reads_with_its_config(smollm2, smollm2_gguf):
    c = smollm2.config
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim) == (576, 30, 9, 3, 64, 1536)
    assert (c.vocab_size, c.tie_embeddings, c.rope_theta, c.norm_eps) == (49152, True, 100_000.0, 1e-5)
    assert (c.max_seq_len, c.rope_scaling, c.bos_token_id, c.eos_token_id) == (8192, None, 1, 2)
    assert "output.weight" not in smollm2.weights
    assert smollm2.dtypes == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    meta, _ = smollm2_gguf
    assert read_gguf_metadata(smollm2.path) == meta   # lamina's header parser reads what gguf reads
    assert smollm2.metadata["general.license"] == "apache-2.0"


def test_smollm2_weights_equal_gguf_dequantization_in_rotate_half_order(smollm2, smollm2_gguf):
    _, tensors = smollm2_gguf
    c = smollm2.config   # the first and last layers stand for all 30 (each costs a dequantization)
    names = ["tok_embeddings.weight", "norm.weight"] + [
        name for name in smollm2.weights if name.startswith(("layers.0.", f"layers.{c.n_layers - 1}."))]
    assert len(names) == 2 + 2 * 9
    for name in names:
        t = tensors[gguf_name(name)]
        expected = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
        np.testing.assert_array_equal(gguf_order(name, smollm2.weights[name], c), expected, err_msg=name)


def test_qk_row_order_is_llama_cpps_permutation():
    # convert_hf_to_gguf.py's permute: reshape(heads, 2, D/2, ...).swapaxes(1, 2), written out.
    assert gguf_row_source(2, 8) == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]
    w = torch.arange(2 * 8 * 3.0).reshape(16, 3)
    assert torch.equal(halves_to_interleaved(w, 2), w[gguf_row_source(2, 8)])
    assert torch.equal(interleaved_to_halves(halves_to_interleaved(w, 2), 2), w)


def write_raw_gguf(path, config: ModelConfig, state: dict[str, torch.Tensor], qtype: Q) -> None:
    """A GGUF as llama.cpp's tools write one, built with the `gguf` package alone: matrices in
    `qtype`, norms F32, Q/K rows interleaved."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(config.max_seq_len)
    w.add_embedding_length(config.dim)
    w.add_block_count(config.n_layers)
    w.add_feed_forward_length(config.ffn_dim)
    w.add_head_count(config.n_heads)
    w.add_head_count_kv(config.n_kv_heads)
    w.add_rope_freq_base(config.rope_theta)
    w.add_layer_norm_rms_eps(config.norm_eps)
    for name, t in state.items():
        array = gguf_order(name, t, config)
        kind = Q.F32 if array.ndim == 1 else qtype
        w.add_tensor(gguf_name(name), gguf.quants.quantize(array, kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_every_common_tensor_type_reads_as_gguf_dequantizes_it(tmp_path, tokenizer, qtype):
    config = tiny(tokenizer, n_layers=1)
    state = weights(random_model(config))
    write_raw_gguf(tmp_path / "m.gguf", config, state, Q[qtype])
    ck = read_gguf(tmp_path / "m.gguf")
    assert ck.config == config.replace(bos_token_id=None, eos_token_id=None)
    assert ck.tokenizer is None
    assert ck.dtypes == ({qtype: 9, "F32": 3} if qtype != "F32" else {"F32": 12})
    _, tensors = gguf_fields(tmp_path / "m.gguf")
    for name, original in state.items():
        t = tensors[gguf_name(name)]
        assert t.tensor_type == (Q.F32 if original.ndim == 1 else Q[qtype])
        expected = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
        np.testing.assert_array_equal(gguf_order(name, ck.weights[name], config), expected, err_msg=name)
        if qtype == "F32":
            assert torch.equal(ck.weights[name], original)


# -- writing -------------------------------------------------------------------------------------

# dtype -> (GGUF type of matrices, how close lamina's read-back is to the original, relative to the
# largest weight: F16 keeps 11 significant bits, Q8_0 rounds to 1/254 of each block's largest value)
WRITTEN = {"f32": (Q.F32, 0.0), "f16": (Q.F16, 2 ** -11), "q8_0": (Q.Q8_0, 1 / 254 + 2 ** -11),
           "q4_0": (Q.Q4_0, 1 / 8 + 2 ** -11)}   # Q4_0: steps of 1/8 of a block's largest magnitude, one side cut at 7


@pytest.mark.parametrize("dtype", WRITTEN)
def test_written_gguf_reads_back_through_gguf_package_and_lamina(tmp_path, tokenizer, dtype):
    config = tiny(tokenizer, rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=64))
    state = weights(random_model(config))
    path = write_gguf(tmp_path / "m.gguf", config, state, tokenizer, dtype=dtype, name="tiny")
    meta, tensors = gguf_fields(path)
    qtype, tolerance = WRITTEN[dtype]

    expected = {
        "general.architecture": "llama", "general.name": "tiny", "general.quantization_version": 2,
        "general.file_type": {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2}[dtype],
        "llama.context_length": 256, "llama.embedding_length": 128, "llama.block_count": 2,
        "llama.feed_forward_length": 256, "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 32,
        "llama.rope.freq_base": 10000.0, "llama.vocab_size": 400,
        "llama.rope.scaling.original_context_length": 64,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.bos_token_id": tokenizer.bos_id, "tokenizer.ggml.eos_token_id": tokenizer.eos_id,
        "tokenizer.ggml.add_bos_token": False, "tokenizer.chat_template": tokenizer.chat_template,
    }
    assert {k: meta[k] for k in expected} == expected
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    n = tokenizer.vocab_size
    vocab = [tokenizer.backend.id_to_token(i) for i in range(n)]
    assert meta["tokenizer.ggml.tokens"] == vocab + [f"[PAD{i}]" for i in range(n, 400)]   # as llama.cpp pads
    assert meta["tokenizer.ggml.token_type"][:5] == [CONTROL] * 3 + [1] * 2
    assert set(meta["tokenizer.ggml.token_type"][n:]) == {5}   # unused
    merges = json.loads(tokenizer.backend.to_str())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) for m in merges] and len(merges) > 50

    assert set(tensors) == {gguf_name(k) for k in state} | {"rope_freqs.weight"}
    for name, w in state.items():
        t = tensors[gguf_name(name)]
        assert tuple(reversed(t.shape.tolist())) == tuple(w.shape), name
        wider = dtype == "q4_0" and name in ("tok_embeddings.weight", "output.weight")   # llama.cpp's way
        assert t.tensor_type == (Q.F32 if w.ndim == 1 else Q.Q8_0 if wider else qtype), name
        ours = gguf_order(name, w, config)
        stored = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ours.shape)
        roundtrip = gguf.quants.dequantize(gguf.quants.quantize(ours, t.tensor_type), t.tensor_type)
        np.testing.assert_array_equal(stored, roundtrip, err_msg=name)
    freqs = tensors["rope_freqs.weight"].data
    assert freqs.min() == 1.0 and freqs.max() == 8.0   # high frequencies kept, low ones divided by 8

    back = read_gguf(path)
    assert back.config == config
    assert back.metadata["general.name"] == "tiny"
    for name, w in state.items():
        if dtype == "f32" or w.ndim == 1:
            assert torch.equal(back.weights[name], w), name
        else:
            assert (back.weights[name] - w).abs().max() <= tolerance * w.abs().max(), name
            assert not torch.equal(back.weights[name], w)
    t = back.tokenizer
    assert (t.bos_token, t.eos_token, t.add_bos, t.chat_template) == (
        tokenizer.bos_token, tokenizer.eos_token, tokenizer.add_bos, tokenizer.chat_template)
    assert t.encode(TEXT + "<|im_end|> 2024 ünïcödé") == tokenizer.encode(TEXT + "<|im_end|> 2024 ünïcödé")


@pytest.mark.parametrize("dtype, tolerance", [("f32", 1e-4), ("f16", 5e-3), ("q8_0", 5e-2), ("q4_0", 5e-2)])
def test_llama_cpp_loads_lamina_gguf_with_equal_logits(tmp_path, tokenizer, dtype, tolerance):
    config = tiny(tokenizer)                        # 4 query heads share 2 key/value heads
    model = random_model(config, seed=1)
    path = write_gguf(tmp_path / "m.gguf", config, weights(model), tokenizer, dtype=dtype)
    ids = tokenizer.encode(TEXT)
    assert llama_cpp_model(path, vocab_only=True).tokenize(
        TEXT.encode(), add_bos=False, special=False) == ids
    # lamina runs the weights as stored; llama.cpp also rounds activations to F16 or Q8_0
    # for its matrix products, which is what the looser tolerances cover.
    back = read_gguf(path)
    ours = logits(from_state_dict(back.config, back.weights), ids)
    assert relative_error(llama_cpp_logits(path, ids), ours) < tolerance
    if dtype == "f32":
        assert np.array_equal(ours, logits(model, ids))


def test_llama_cpp_applies_llama31_rope_scaling_from_rope_freqs(tmp_path, tokenizer):
    # Scaling divides the frequencies whose wavelength exceeds original/low_freq_factor = 32
    # positions; over 160 positions that changes the logits well past the tolerance.
    scaling = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=32)
    config = tiny(tokenizer, rope_scaling=scaling, tie_embeddings=True)
    model = random_model(config, seed=2)
    path = write_gguf(tmp_path / "m.gguf", config, weights(model), tokenizer, dtype="f32")
    assert read_gguf(path).config.rope_scaling == scaling
    ids = torch.randint(3, tokenizer.vocab_size, (160,), generator=torch.Generator().manual_seed(0)).tolist()
    ours = logits(model, ids)
    unscaled = logits(from_state_dict(config.replace(rope_scaling=None), weights(model)), ids)
    assert relative_error(unscaled, ours) > 0.05
    assert relative_error(llama_cpp_logits(path, ids), ours) < 1e-4


def llama_cpp_greedy(path, ids: list[int], n: int) -> list[int]:
    llama = llama_cpp_model(path, logits_all=True, n_ctx=64)
    llama.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llama.scores[llama.n_tokens - 1])))
        llama.eval(out[-1:])
    return out


def test_llama_cpp_continues_lamina_written_smollm2_like_lamina(tmp_path, smollm2):
    path = write_gguf(tmp_path / "smollm2.gguf", smollm2.config, smollm2.weights, smollm2.tokenizer,
                      dtype="q8_0")
    back = read_gguf(path)
    assert back.dtypes == {"Q8_0": 211, "F32": 61} and back.config == smollm2.config
    prompt = "The capital of France is"
    ids = back.tokenizer.encode(prompt)
    assert llama_cpp_model(path, vocab_only=True).tokenize(
        prompt.encode(), add_bos=False, special=False) == ids == smollm2.tokenizer.encode(prompt)
    # Greedy from the Q8_0 weights in both; llama.cpp also rounds activations to Q8_0, so a
    # prompt whose continuation passes a near-tie could part ways: this one has none in 16 tokens.
    engine = Engine(from_state_dict(back.config, back.weights))
    ours = [row[0] for row in engine.generate([ids], SamplingParams(temperature=0, max_new_tokens=16))]
    assert len(ours) == 16
    assert llama_cpp_greedy(path, ids, 16) == ours
    assert back.tokenizer.decode(ours).startswith(" Paris")


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["q4_k", "bf16", "F16", "float32"])
def test_writing_a_dtype_other_than_f32_f16_q8_0_q4_0_raises_and_writes_nothing(tmp_path, tokenizer, dtype):
    config = tiny(tokenizer, n_layers=1)
    with pytest.raises(LaminaError, match=f"GGUF dtype '{dtype}' cannot be written"):
        write_gguf(tmp_path / "m.gguf", config, weights(random_model(config)), tokenizer, dtype=dtype)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("existing", ["file", "empty directory"])
def test_writing_over_an_existing_path_raises_and_changes_nothing(tmp_path, tokenizer, existing):
    config = tiny(tokenizer, n_layers=1)
    target = tmp_path / "m.gguf"
    if existing == "file":
        target.write_bytes(b"precious")
    else:
        target.mkdir()
    with pytest.raises(LaminaError, match="already exists"):
        write_gguf(target, config, weights(random_model(config)), tokenizer, dtype="f32")
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
    assert target.read_bytes() == b"precious" if existing == "file" else list(target.iterdir()) == []


def test_writing_weights_that_do_not_fit_the_config_raises_and_writes_nothing(tmp_path, tokenizer):
    config = tiny(tokenizer, n_layers=1)
    state = weights(random_model(config))
    del state["layers.0.ffn_norm.weight"]
    with pytest.raises(LaminaError, match="missing tensor layers.0.ffn_norm.weight"):
        write_gguf(tmp_path / "m.gguf", config, state, tokenizer, dtype="f32")
    small = config.replace(vocab_size=tokenizer.vocab_size - 1)
    says = f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {small.vocab_size}"
    with pytest.raises(LaminaError, match=says):
        write_gguf(tmp_path / "m.gguf", small, weights(random_model(small)), tokenizer, dtype="f32")
    assert list(tmp_path.iterdir()) == []


def test_llama_cpp_runs_a_lamina_mixture_of_experts_with_equal_logits(tmp_path, tokenizer):
    """Mixtral's routing under llama.cpp's llama architecture: the experts stacked as llama.cpp
    keeps them (ffn_gate_exps, ...), expert_count and expert_used_count in the metadata."""
    config = tiny(tokenizer).replace(n_experts=4, n_active_experts=2, ffn_dim=64, expert_ffn_dim=0)   # experts of 64
    model = random_model(config, seed=2)
    path = write_gguf(tmp_path / "moe.gguf", config, weights(model), tokenizer, dtype="f32")
    meta, tensors = gguf_fields(path)
    assert (meta["llama.expert_count"], meta["llama.expert_used_count"]) == (4, 2)
    assert tuple(reversed(tensors["blk.0.ffn_gate_exps.weight"].shape.tolist())) == (4, 64, config.dim)
    back = read_gguf(path)
    assert back.config == config
    ids = tokenizer.encode(TEXT)
    assert relative_error(llama_cpp_logits(path, ids), logits(model, ids)) < 1e-4


@pytest.mark.parametrize("experts", [0, 4], ids=["qwen3", "qwen3moe"])
def test_llama_cpp_runs_lamina_qwen3_with_equal_logits(tmp_path, tokenizer, experts):
    """Per-head query/key norms make a Qwen3 (with experts, Qwen3-MoE): llama.cpp's qwen3 and
    qwen3moe architectures, the query norm under its own name (attn_q_norm), the query/key rows
    left in halves (Qwen's RoPE rotates halves, as lamina's), the experts' width under
    expert_feed_forward_length. Read back as written."""
    config = tiny(tokenizer).replace(qk_norm=True, n_experts=experts, n_active_experts=2,
                                     expert_ffn_dim=48 if experts else 0)
    model = random_model(config, seed=3)
    path = write_gguf(tmp_path / "qwen3.gguf", config, weights(model), tokenizer, dtype="f32")
    meta, tensors = gguf_fields(path)
    arch = "qwen3moe" if experts else "qwen3"
    assert meta["general.architecture"] == arch and "blk.0.attn_q_norm.weight" in tensors
    if experts:
        assert (meta["qwen3moe.expert_count"], meta["qwen3moe.expert_feed_forward_length"]) == (4, 48)
    back = read_gguf(path)
    assert back.config == config
    assert all(torch.equal(back.weights[k], v) for k, v in weights(model).items())
    ids = tokenizer.encode(TEXT)
    assert relative_error(llama_cpp_logits(path, ids), logits(model, ids)) < 1e-4


def test_llama_cpp_runs_lamina_llama4_with_equal_logits(tmp_path, tokenizer):
    """Llama 4's text model as llama.cpp's llama4 architecture: the shared expert, input-scaled
    top-1 sigmoid routing every second layer, a dense layer between, the fourth layer without
    RoPE, the query/key L2 norm. What llama.cpp fixes (chunks of 8192, the temperature, a
    RoPE-free layer every fourth) is checked before any file is made."""
    config = tiny(tokenizer).replace(n_layers=4, n_experts=4, n_active_experts=1, n_shared_experts=1,
                                     expert_ffn_dim=48, router="sigmoid", norm_topk=False, expert_input_scaled=True,
                                     moe_every=2, nope_every=4, attention_chunk=8192, qk_l2_norm=True,
                                     attn_temperature=0.1, attn_floor=8192, rope_theta=500000.0)
    model = random_model(config, seed=4)
    path = write_gguf(tmp_path / "llama4.gguf", config, weights(model), tokenizer, dtype="f32")
    meta, tensors = gguf_fields(path)
    assert meta["general.architecture"] == "llama4" and meta["llama4.interleave_moe_layer_step"] == 2
    assert "blk.1.ffn_gate_shexp.weight" in tensors and "blk.0.ffn_gate.weight" in tensors
    back = read_gguf(path)
    assert back.config == config
    assert all(torch.equal(back.weights[k], v) for k, v in weights(model).items())
    ids = tokenizer.encode(TEXT)
    assert relative_error(llama_cpp_logits(path, ids), logits(model, ids)) < 1e-4
    with pytest.raises(LaminaError, match="attention_chunk 16"):
        write_gguf(tmp_path / "chunked.gguf", config.replace(attention_chunk=16), weights(model), tokenizer)
    assert not (tmp_path / "chunked.gguf").exists()


V3_ROUTING = dict(router="sigmoid", route_scale=2.5, expert_groups=4, topk_groups=2, expert_bias=True)
V2_ROUTING = dict(router="softmax", norm_topk=False)


@pytest.mark.parametrize("layers,q_lora,routing", [(3, 24, V3_ROUTING), (26, 0, V2_ROUTING)],
                         ids=["v3-like", "v2-lite-like"])
def test_llama_cpp_runs_lamina_deepseek_latent_attention_with_equal_logits(tmp_path, tokenizer, layers, q_lora,
                                                                            routing):
    """DeepSeek's architecture as llama.cpp's deepseek2: latent attention stored as one key/value
    head of the latent (MLA), the up-projection split per head into attn_k_b and attn_v_b, the
    RoPE rows interleaved as DeepSeek keeps them; a dense first layer, then experts with a shared
    one: V3's sigmoid routing in groups, route scale and the balancing bias, or V2-Lite's softmax
    without a query bottleneck (which llama.cpp takes only at its 26 or 27 layers). Read back as
    written."""
    config = tiny(tokenizer).replace(n_layers=layers, n_kv_heads=0, head_dim=0, kv_lora_rank=32, q_lora_rank=q_lora,
                                     qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, n_experts=8,
                                     n_active_experts=2, n_shared_experts=1, expert_ffn_dim=32, dense_layers=1,
                                     norm_eps=1e-6, **routing)
    model = random_model(config, seed=5)
    for layer in model.layers[1:]:
        if layer.feed_forward.expert_bias is not None:
            layer.feed_forward.expert_bias.normal_(0, 0.05, generator=torch.Generator().manual_seed(6))
    path = write_gguf(tmp_path / "deepseek2.gguf", config, weights(model), tokenizer, dtype="f32")
    meta, tensors = gguf_fields(path)
    assert meta["general.architecture"] == "deepseek2" and "blk.1.attn_k_b.weight" in tensors
    back = read_gguf(path)
    assert back.config == config
    assert all(torch.equal(back.weights[k], v) for k, v in weights(model).items())
    ids = tokenizer.encode(TEXT)
    assert relative_error(llama_cpp_logits(path, ids), logits(model, ids)) < 1e-4
    if not q_lora:
        with pytest.raises(LaminaError, match="26 or 27 layers"):
            write_gguf(tmp_path / "short.gguf", config.replace(n_layers=3), weights(random_model(config.replace(
                n_layers=3))), tokenizer)

