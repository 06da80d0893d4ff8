"""Every malformed checkpoint ends in one LaminaError line that names the file and the problem,
writes nothing, and reaches the command line as a single `lamina: error:` line."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from lamina.checkpoint import load_checkpoint, read_gguf, write_gguf, write_hf, write_meta
from lamina.cli import main
from lamina.errors import LaminaError
from lamina.model import ModelConfig, expected_shapes
from lamina.tokenizer import Tokenizer

CONFIG = ModelConfig(dim=32, n_layers=2, n_heads=2, ffn_dim=64, vocab_size=64, max_seq_len=64)


def random_weights(config: ModelConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=g) for k, shape in expected_shapes(config).items()}


def byte_level_bpe() -> Tokenizer:
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    return Tokenizer(backend, bos_token="<s>", eos_token="</s>")


# -- the bad inputs: each builds one under `tmp` and returns (model reference, what the error says)

def hf_dir(tmp: Path, **kw) -> Path:
    return write_hf(tmp / "model", CONFIG, random_weights(CONFIG), **kw)


def edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del config[key]
    (path / "config.json").write_text(json.dumps(config))


def missing_directory(tmp):
    return tmp / "no-such-model", r"no-such-model: no such file or directory"


def missing_weights_file(tmp):
    path = hf_dir(tmp)
    (path / "model.safetensors").unlink()
    return path, r"model\.safetensors: file not found"


def missing_shard(tmp):
    path = hf_dir(tmp, max_shard_bytes=20_000)
    shard = sorted(path.glob("model-*.safetensors"))[1]
    shard.unlink()
    return path, rf"{shard.name}: file not found"


def missing_config_field(tmp):
    path = hf_dir(tmp)
    edit_config(path, hidden_size=None)
    return path, r"config\.json: missing field hidden_size"


def config_not_json(tmp):
    path = hf_dir(tmp)
    (path / "config.json").write_text("{'hidden_size': 32")
    return path, r"config\.json: not valid JSON"


def unknown_architecture(tmp):
    path = hf_dir(tmp)
    edit_config(path, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    return path, r"config\.json: architecture GPT2LMHeadModel is not supported"


def truncated_safetensors(tmp):
    path = hf_dir(tmp)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    return path, r"model\.safetensors: not a readable safetensors file"


def corrupt_safetensors_header(tmp):
    path = hf_dir(tmp)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:8] + b"#" * 32 + data[40:])
    return path, r"model\.safetensors: not a readable safetensors file"


def shape_mismatch(tmp):
    path = hf_dir(tmp)
    edit_config(path, intermediate_size=CONFIG.ffn_dim * 2)
    return path, r"model: tensor model\.layers\.0\.mlp\.gate_proj\.weight has shape \(64, 32\) but config\.json implies \(128, 32\)"


def missing_tensor(tmp):
    path = hf_dir(tmp)
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.post_attention_layernorm.weight"]
    save_file(tensors, path / "model.safetensors")
    return path, r"model: missing tensor model\.layers\.1\.post_attention_layernorm\.weight"


def unexpected_tensor(tmp):
    path = hf_dir(tmp)
    tensors = load_file(path / "model.safetensors") | {"model.layers.0.self_attn.q_proj.bias": torch.zeros(32)}
    save_file(tensors, path / "model.safetensors")
    return path, r"model\.safetensors: unexpected tensor model\.layers\.0\.self_attn\.q_proj\.bias"


def truncated_gguf(tmp):
    tokenizer = byte_level_bpe()
    config = CONFIG.replace(vocab_size=tokenizer.vocab_size)
    path = write_gguf(tmp / "model.gguf", config, random_weights(config), tokenizer, dtype="f32")
    assert read_gguf(path).config.dim == config.dim   # whole, it reads
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path, r"model\.gguf: not a readable GGUF file"


def gguf_of_another_architecture(tmp):
    writer = gguf.GGUFWriter(tmp / "gpt2.gguf", "gpt2")
    writer.add_embedding_length(32)
    writer.add_tensor("token_embd.weight", np.zeros((64, 32), dtype=np.float32))
    _finish(writer)
    return tmp / "gpt2.gguf", r"gpt2\.gguf: architecture 'gpt2' is not supported"


def gguf_with_unreadable_quantization(tmp):
    q8_1 = gguf.GGMLQuantizationType.Q8_1   # gguf.quants has no dequantizer for it
    with pytest.raises(NotImplementedError):
        gguf.quants.dequantize(np.zeros((1, 40), dtype=np.uint8), q8_1)
    writer = gguf.GGUFWriter(tmp / "q8_1.gguf", "llama")
    writer.add_embedding_length(32)
    writer.add_block_count(1)
    writer.add_feed_forward_length(64)
    writer.add_head_count(2)
    writer.add_vocab_size(64)
    block, block_bytes = gguf.GGML_QUANT_SIZES[q8_1]
    writer.add_tensor("token_embd.weight", np.zeros((64, 32 // block * block_bytes), dtype=np.uint8),
                      raw_dtype=q8_1)
    _finish(writer)
    return tmp / "q8_1.gguf", r"q8_1\.gguf: tensor token_embd\.weight uses Q8_1, a type lamina cannot read"


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


class _CreatesAFile:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def pickle_that_runs_code(tmp):
    path = write_meta(tmp / "meta", CONFIG, random_weights(CONFIG))
    state = torch.load(path / "consolidated.00.pth", weights_only=True)
    torch.save(state | {"norm.weight": _CreatesAFile(tmp / "payload-ran")}, path / "consolidated.00.pth")
    return path, r"consolidated\.00\.pth: refused: the pickle asks to run code"


def meta_without_params(tmp):
    path = write_meta(tmp / "meta", CONFIG, random_weights(CONFIG))
    (path / "params.json").unlink()
    return path / "consolidated.00.pth", r"params\.json: file not found"


def meta_params_disagree_with_tensors(tmp):
    path = write_meta(tmp / "meta", CONFIG, random_weights(CONFIG))
    params = json.loads((path / "params.json").read_text()) | {"dim": 48}
    (path / "params.json").write_text(json.dumps(params))
    return path, r"meta: tensor tok_embeddings\.weight has shape \(64, 32\) but params\.json implies \(64, 48\)"


def meta_pth_that_is_not_a_state_dict(tmp):
    path = write_meta(tmp / "meta", CONFIG, random_weights(CONFIG))
    torch.save([torch.zeros(3)], path / "consolidated.00.pth")
    return path, r"consolidated\.00\.pth: expected a dict of named tensors"


BAD_INPUTS = [missing_directory, missing_weights_file, missing_shard, missing_config_field,
              config_not_json, unknown_architecture, truncated_safetensors,
              corrupt_safetensors_header, shape_mismatch, missing_tensor, unexpected_tensor,
              truncated_gguf, gguf_of_another_architecture, gguf_with_unreadable_quantization,
              pickle_that_runs_code, meta_without_params, meta_params_disagree_with_tensors,
              meta_pth_that_is_not_a_state_dict]


def files_under(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("bad_input", BAD_INPUTS, ids=lambda f: f.__name__)
def test_bad_input_raises_one_clear_line_and_writes_nothing(tmp_path, bad_input):
    ref, says = bad_input(tmp_path)
    before = files_under(tmp_path)
    with pytest.raises(LaminaError, match=says) as e:
        load_checkpoint(ref)
    assert "\n" not in str(e.value)
    assert files_under(tmp_path) == before
    assert not (tmp_path / "payload-ran").exists()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("bad_input", BAD_INPUTS, ids=lambda f: f.__name__)
def test_cli_reports_bad_input_in_one_line_without_traceback(tmp_path, capsys, bad_input):
    ref, says = bad_input(tmp_path)
    before = files_under(tmp_path)
    for argv in (["info", str(ref)], ["convert", str(ref), str(tmp_path / "out"), "--to", "hf"]):
        assert main(argv) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert len(err.splitlines()) == 1 and err.startswith("lamina: error: ")
        assert "Traceback" not in err
    assert files_under(tmp_path) == before   # no output, not even a partial one


def test_failed_conversion_leaves_no_output_behind(tmp_path, capsys):
    source = hf_dir(tmp_path)
    before = files_under(tmp_path)
    assert main(["convert", str(source), str(tmp_path / "meta"), "--to", "meta", "--shards", "3"]) == 1
    assert main(["convert", str(source), str(tmp_path / "out.gguf"), "--to", "gguf"]) == 1   # no tokenizer
    assert main(["convert", str(source), str(source), "--to", "hf"]) == 1                    # exists
    errors = capsys.readouterr().err.splitlines()
    assert [line.startswith("lamina: error: ") for line in errors] == [True] * 3
    assert "does not split into 3 equal model-parallel shards" in errors[0]
    assert "must carry its tokenizer" in errors[1] and "already exists" in errors[2]
    assert files_under(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
