"""Checkpoints built to break the reader: wrongly typed or absurd config values, sizes no file
holds, indexes that point out of the model directory, GGUF headers with impossible dimensions.
Each ends in one LaminaError line naming the file, the command line prints one `lamina: error:`
line, and nothing is written; no size in a file makes lamina build a huge model."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lamina.checkpoint import load_checkpoint, write_meta
from lamina.checkpoint.layout import from_lamina
from lamina.cli import main
from lamina.errors import LaminaError

from .test_bad_input import CONFIG, edit_config, files_under, hf_dir, random_weights

V = gguf.GGUFValueType


# -- config.json values

def config_value(**changes):
    def bad_input(tmp):
        path = hf_dir(tmp)
        edit_config(path, **changes)
        return path
    return bad_input


CONFIG_VALUES = {   # name: (config.json changes, what the error says)
    "hidden_size_a_string": ({"hidden_size": "64"}, r"config\.json: hidden_size must be an integer, got '64'"),
    "hidden_size_a_fraction": ({"hidden_size": 64.5}, r"config\.json: hidden_size must be an integer, got 64\.5"),
    "hidden_size_a_bool": ({"hidden_size": True}, r"config\.json: hidden_size must be an integer, got True"),
    "negative_kv_heads": ({"num_key_value_heads": -2},
                          r"config\.json: num_key_value_heads must be between 0 and"),
    "llama3_scaling_without_factor": ({"rope_scaling": {"rope_type": "llama3"}},
                                      r"config\.json: rope_scaling of type llama3 is missing factor"),
    "rope_scaling_a_string": ({"rope_scaling": "llama3"}, r"config\.json: rope_scaling must be an object"),
    "llama3_factor_a_string": ({"rope_scaling": {"rope_type": "llama3", "factor": "8", "low_freq_factor": 1,
                                                 "high_freq_factor": 4, "original_max_position_embeddings": 64}},
                               r"config\.json: rope_scaling\.factor must be a number, got '8'"),
    "rms_norm_eps_a_string": ({"rms_norm_eps": "x"}, r"config\.json: rms_norm_eps must be a number, got 'x'"),
    "rms_norm_eps_nan": ({"rms_norm_eps": math.nan},
                         r"config\.json: rms_norm_eps must be a finite positive number"),
    "rope_theta_infinite": ({"rope_theta": math.inf},
                            r"config\.json: rope_theta must be a finite positive number"),
    "tie_embeddings_a_string": ({"tie_word_embeddings": "yes"},
                                r"config\.json: tie_word_embeddings must be true or false"),
    "eos_a_list_of_strings": ({"eos_token_id": ["</s>"]}, r"config\.json: eos_token_id must be a token id"),
    "a_million_layers": ({"num_hidden_layers": 1_000_000},
                         r"model: config\.json asks for 1,000,000 layers but the weights hold 2$"),
    "a_vocabulary_past_int32": ({"vocab_size": 2**40}, r"config\.json: vocab_size must be between 1 and"),
    "heads_wider_than_the_weights": ({"num_attention_heads": 2**20, "head_dim": 2**10},
                                     r"model: config\.json implies a tensor of 32 x 1,073,741,824"),
}


def deeply_nested_config(tmp):
    path = hf_dir(tmp)
    (path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    return path


def index(weight_map):
    def bad_input(tmp):
        path = hf_dir(tmp)
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        return path
    return bad_input


def index_leaving_the_directory(name_of):
    """An index naming a whole, loadable model.safetensors outside the directory: only the
    refusal stops it from loading."""
    def bad_input(tmp):
        path = hf_dir(tmp)
        elsewhere = tmp / "elsewhere"
        elsewhere.mkdir()
        (path / "model.safetensors").rename(elsewhere / "model.safetensors")
        name = name_of(path, elsewhere / "model.safetensors")
        weight_map = {"model.embed_tokens.weight": name}
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        return path
    return bad_input


OUTSIDE = r"model: weight file .* lies outside the model directory; refused"
HF_BAD_INPUTS = {
    **{name: (config_value(**changes), says) for name, (changes, says) in CONFIG_VALUES.items()},
    "config_nested_100000_deep": (deeply_nested_config, r"config\.json: not valid JSON \(nested too deeply\)"),
    "index_weight_map_a_list": (index(["model.safetensors"]), r"index\.json: weight_map must be an object"),
    "index_naming_etc_passwd": (index({"model.embed_tokens.weight": "/etc/passwd"}), OUTSIDE),
    "index_naming_dot_dot": (index_leaving_the_directory(lambda path, target: "../elsewhere/model.safetensors"),
                             OUTSIDE),
}


# -- params.json

def meta_params(**changes):
    def bad_input(tmp):
        path = write_meta(tmp / "meta", CONFIG, random_weights(CONFIG))
        params = json.loads((path / "params.json").read_text()) | changes
        (path / "params.json").write_text(json.dumps(params))
        return path
    return bad_input


META_BAD_INPUTS = {
    "params_a_million_layers": (meta_params(n_layers=1_000_000),
                                r"meta: params\.json asks for 1,000,000 layers but the weights hold 2$"),
    "params_dim_a_string": (meta_params(dim="32"), r"params\.json: dim must be an integer, got '32'"),
    "params_multiple_of_zero": (meta_params(multiple_of=0), r"params\.json: multiple_of must be between 1"),
    "params_ffn_multiplier_infinite": (meta_params(ffn_dim_multiplier=math.inf),
                                       r"params\.json: ffn_dim_multiplier must be a finite positive number"),
}


# -- GGUF: metadata through the gguf package's writer, broken headers byte by byte

def llama_gguf(changes: dict[str, tuple] | None = None):
    """A GGUF of CONFIG with its llama.* metadata, `changes` replacing keys by (value, type)."""
    def bad_input(tmp):
        path = tmp / "model.gguf"
        writer = gguf.GGUFWriter(path, "llama")
        keys = {"llama.embedding_length": (CONFIG.dim, V.UINT32), "llama.block_count": (CONFIG.n_layers, V.UINT32),
                "llama.feed_forward_length": (CONFIG.ffn_dim, V.UINT32),
                "llama.attention.head_count": (CONFIG.n_heads, V.UINT32),
                "llama.context_length": (CONFIG.max_seq_len, V.UINT32)} | (changes or {})
        for key, (value, vtype) in keys.items():
            writer.add_key_value(key, value, vtype)
        for name, t in random_weights(CONFIG).items():
            writer.add_tensor(from_lamina(name, "gguf"), t.numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path
    return bad_input


def raw_gguf(tensor_dims: list[int] | None = None, metadata: bytes = b"", n_kv: int = 0):
    """A GGUF written byte by byte (spec: ggml docs/gguf.md, version 3): general.architecture,
    then `metadata` (n_kv more pairs), then one F32 tensor "token_embd.weight" of `tensor_dims`
    (ggml order) and its data for as many values as the dims multiply to, if that is small."""
    def string(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()

    def bad_input(tmp):
        dims = [CONFIG.dim, CONFIG.vocab_size] if tensor_dims is None else tensor_dims
        head = b"GGUF" + struct.pack("<IQQ", 3, 1, 1 + n_kv)
        head += string("general.architecture") + struct.pack("<I", V.STRING) + string("llama") + metadata
        head += string("token_embd.weight") + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        head += struct.pack("<IQ", gguf.GGMLQuantizationType.F32, 0)
        head += b"\0" * (-len(head) % 32)
        values = math.prod(dims) if dims and math.prod(dims) < 4096 else 16
        path = tmp / "raw.gguf"
        path.write_bytes(head + np.zeros(values, dtype=np.float32).tobytes())
        return path
    return bad_input


def nested_arrays(depth: int) -> bytes:
    key = b"deep"
    return (struct.pack("<Q", len(key)) + key + struct.pack("<I", V.ARRAY)
            + struct.pack("<IQ", V.ARRAY, 1) * (depth - 1) + struct.pack("<IQ", V.UINT8, 1) + b"\x07")


UNREADABLE = r"raw\.gguf: not a readable GGUF file "
GGUF_BAD_INPUTS = {
    "gguf_a_million_blocks": (
        llama_gguf({"llama.block_count": (1_000_000, V.UINT32)}),
        r"model\.gguf: the GGUF metadata asks for 1,000,000 layers but the weights hold 2$"),
    "gguf_embedding_length_a_string": (
        llama_gguf({"llama.embedding_length": ("32", V.STRING)}),
        r"model\.gguf: llama\.embedding_length must be an integer, got '32'"),
    "gguf_alignment_zero": (
        llama_gguf({"general.alignment": (0, V.UINT32)}),
        r"model\.gguf: not a readable GGUF file \(general\.alignment must be a power of two, got 0\)"),
    "gguf_alignment_a_string": (
        llama_gguf({"general.alignment": ("32", V.STRING)}),
        r"model\.gguf: not a readable GGUF file \(general\.alignment must be a power of two"),
    "gguf_tensor_of_no_dimensions": (
        raw_gguf([]), UNREADABLE + r"\(tensor token_embd\.weight has 0 dimensions"),
    "gguf_dimensions_overflow_int64": (
        raw_gguf([2**32, 2**32]), UNREADABLE + r"\(tensor token_embd\.weight has impossible dimensions"),
    "gguf_metadata_arrays_nested_100000_deep": (
        raw_gguf(metadata=nested_arrays(100_000), n_kv=1), UNREADABLE + r"\(metadata arrays nested deeper"),
    "gguf_a_count_of_2_to_the_63": (
        raw_gguf(metadata=struct.pack("<Q", 4) + b"many" + struct.pack("<IIQ", V.ARRAY, V.STRING, 2**63), n_kv=1),
        UNREADABLE + r"\(file ends inside its header"),
}

BAD_INPUTS = HF_BAD_INPUTS | META_BAD_INPUTS | GGUF_BAD_INPUTS


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_hostile_checkpoint_is_one_clear_line_naming_the_file(tmp_path, capsys, case):
    build, says = BAD_INPUTS[case]
    ref = build(tmp_path)
    before = files_under(tmp_path)
    with pytest.raises(LaminaError, match=says) as e:
        load_checkpoint(ref)
    assert "\n" not in str(e.value) and str(ref.name) in str(e.value)
    for argv in (["info", str(ref)], ["convert", str(ref), str(tmp_path / "out"), "--to", "hf"]):
        assert main(argv) == 1
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1 and err.startswith("lamina: error: ")
    assert files_under(tmp_path) == before


# -- any JSON value in any config.json field: it loads, or it is one LaminaError line

FIELDS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
          "intermediate_size", "vocab_size", "rms_norm_eps", "rope_theta", "max_position_embeddings",
          "tie_word_embeddings", "bos_token_id", "eos_token_id", "rope_scaling", "rope_parameters",
          "architectures", "model_type", "attention_bias",
          "rope_scaling.factor", "rope_scaling.low_freq_factor", "rope_scaling.high_freq_factor",
          "rope_scaling.original_max_position_embeddings", "rope_scaling.rope_type"]
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
           | st.sampled_from([0, -1, 1, 2, 16, 32, 64, 2**31, 2**63, 10**30, 1e-300, 1e300, -0.0, 64.5,
                              math.nan, math.inf, "llama3", "default", "llama"]))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


@pytest.fixture(scope="module")
def llama3_model(tmp_path_factory):
    """The tiny model with llama3 RoPE scaling, so the rope_scaling.* fields are read."""
    path = hf_dir(tmp_path_factory.mktemp("hostile"))
    edit_config(path, rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    assert load_checkpoint(path).config.rope_scaling is not None
    return path


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=JSON_VALUES)
@example(field="rope_theta", value=2**64)       # once found: an int past int64 reached torch and overflowed
def test_any_value_in_any_config_field_loads_or_is_one_clear_line(llama3_model, field, value):
    good = (llama3_model / "config.json").read_text()
    config = json.loads(good)
    key, _, sub = field.partition(".")
    if sub:
        config[key] = {**config[key], sub: value}
    else:
        config[key] = value
    try:
        (llama3_model / "config.json").write_text(json.dumps(config))
        try:
            load_checkpoint(llama3_model)
        except LaminaError as e:
            assert "\n" not in str(e) and "config.json" in str(e)
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["info", "--json", str(llama3_model)])
        if code:
            assert stdout.getvalue() == "" and stderr.getvalue().startswith("lamina: error: ")
            assert len(stderr.getvalue().splitlines()) == 1
        else:
            assert json.loads(stdout.getvalue())["format"] == "hf"
    finally:
        (llama3_model / "config.json").write_text(good)
    assert sorted(os.listdir(llama3_model)) == ["config.json", "generation_config.json", "lamina.json",
                                                "model.safetensors"]


# -- any typed value in any GGUF metadata key, any JSON value in any params.json field

GGUF_KEYS = ["llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
             "llama.attention.head_count", "llama.attention.head_count_kv", "llama.attention.key_length",
             "llama.rope.dimension_count", "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base",
             "llama.context_length", "general.alignment", "general.architecture",
             "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"]
GGUF_VALUES = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda v: (v, V.UINT32)),
    st.sampled_from([0, 1, 2, 16, 32, 64, 2**31, 2**32 - 1]).map(lambda v: (v, V.UINT32)),
    st.integers(-2**63, 2**63 - 1).map(lambda v: (v, V.INT64)),
    st.integers(0, 2**64 - 1).map(lambda v: (v, V.UINT64)),
    st.floats(width=32).map(lambda v: (v, V.FLOAT32)),
    st.floats().map(lambda v: (v, V.FLOAT64)),
    st.text(max_size=8).map(lambda v: (v, V.STRING)),
    st.booleans().map(lambda v: (v, V.BOOL)),
    st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=3).map(lambda v: (v, V.ARRAY)))   # INT32 items


def assert_loads_or_one_line(ref, names: str) -> None:
    try:
        load_checkpoint(ref)
    except LaminaError as e:
        assert "\n" not in str(e) and names in str(e)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(GGUF_KEYS), typed_value=GGUF_VALUES)
def test_any_value_in_any_gguf_metadata_key_loads_or_is_one_clear_line(tmp_path, key, typed_value):
    path = tmp_path / "model.gguf"
    path.unlink(missing_ok=True)
    assert_loads_or_one_line(llama_gguf({key: typed_value})(tmp_path), "model.gguf")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "multiple_of",
                              "ffn_dim_multiplier", "norm_eps", "rope_theta", "max_seq_len",
                              "use_scaled_rope", "rope_scaling_factor", "vocab_size"]),
       value=JSON_VALUES)
def test_any_value_in_any_params_field_loads_or_is_one_clear_line(meta_model, field, value):
    good = (meta_model / "params.json").read_text()
    try:
        (meta_model / "params.json").write_text(json.dumps(json.loads(good) | {field: value}))
        assert_loads_or_one_line(meta_model, "params.json")
    finally:
        (meta_model / "params.json").write_text(good)


@pytest.fixture(scope="module")
def meta_model(tmp_path_factory):
    return write_meta(tmp_path_factory.mktemp("hostile") / "meta", CONFIG, random_weights(CONFIG))


def test_weights_linked_into_a_blob_store_load_as_a_hugging_face_cache_snapshot_does(tmp_path):
    """A snapshot folder of the HF cache holds links into ../../blobs: the links were made by
    whoever made the folder, so they are followed; only the index's names are held to the folder."""
    path = hf_dir(tmp_path)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (path / "model.safetensors").rename(blobs / "0123abcd")
    (path / "model.safetensors").symlink_to(blobs / "0123abcd")
    ck = load_checkpoint(path)
    assert ck.config.n_layers == CONFIG.n_layers
