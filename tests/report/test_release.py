"""Releases anyone can verify: `lamina release keygen`, `lamina release MODEL_DIR --key KEY` and
`lamina verify MODEL_DIR --pubkey KEY.pub` on a real model directory. Any byte changed in any file
(the manifest and its signature included), a file added or removed, or a wrong key fails and names
what differs; the signature is checked by OpenSSL too, independently of lamina and `cryptography`."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess

import pytest

from lamina.cli import main
from lamina.errors import LaminaError
from lamina.files import sha256
from lamina.report import release


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    assert main(["release", "keygen", "--out", str(root / "publisher")]) == 0
    assert main(["release", "keygen", "--out", str(root / "stranger")]) == 0
    return root


@pytest.fixture(scope="module")
def released(tmp_path_factory, keys):
    """A real model directory (SmolLM2's tokenizer and chat template, a tiny Llama written by
    lamina with its lamina.json record, in two safetensors shards), released."""
    import torch

    from lamina.checkpoint import write_hf
    from lamina.model import ModelConfig, Transformer, init_weights, weights
    from lamina.tokenizer import load_tokenizer
    tok = load_tokenizer("smollm2-135m-instruct")
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176, vocab_size=tok.vocab_size,
                         max_seq_len=256, tie_embeddings=True, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    model_dir = tmp_path_factory.mktemp("release") / "model"
    write_hf(model_dir, config, weights(init_weights(Transformer(config), seed=0)), tok,
             dtype=torch.float32, max_shard_bytes=8 << 20,
             made_by={"command": "test", "data": {"ledger_digest": "ab" * 32}})
    assert main(["release", str(model_dir), "--key", str(keys / "publisher")]) == 0
    return model_dir


def copy(released, where):
    dst = where / "model"
    shutil.copytree(released, dst)
    return dst


def test_keygen_writes_a_private_key_no_one_else_can_read(keys, capsys):
    private, public = keys / "publisher", keys / "publisher.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert main(["release", "keygen", "--out", str(private)]) == 1      # never overwritten
    assert "already exists" in capsys.readouterr().err
    loose = keys / "loose"
    shutil.copy(private, loose)
    loose.chmod(0o644)
    with pytest.raises(LaminaError, match="readable by others"):
        release.load_private_key(loose)


def test_a_release_verifies_and_lists_every_file(released, keys, capsys):
    assert main(["verify", str(released), "--pubkey", str(keys / "publisher.pub")]) == 0
    assert "verified" in capsys.readouterr().out
    manifest = json.loads((released / release.MANIFEST).read_text())
    on_disk = sorted(p.name for p in released.iterdir() if p.name not in (release.MANIFEST, release.SIGNATURE))
    assert sorted(manifest["files"]) == on_disk and len(on_disk) >= 6     # two shards, their index, ...
    assert sum(n.startswith("model-") for n in on_disk) == 2
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256(released / name)
    assert manifest["ledger_digests"] == ["ab" * 32]
    assert manifest["lamina_version"] and manifest["fingerprint"].startswith("sha256:")


def test_openssl_verifies_the_signature_independently(released, keys, tmp_path):
    signature = json.loads((released / release.SIGNATURE).read_text())["signature"]
    (tmp_path / "sig").write_bytes(base64.b64decode(signature))
    result = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(keys / "publisher.pub"),
                             "-rawin", "-in", str(released / release.MANIFEST), "-sigfile", str(tmp_path / "sig")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "Signature Verified Successfully" in result.stdout


def files_of(model_dir):
    return sorted(p.name for p in model_dir.iterdir())


def test_any_changed_byte_fails_and_is_named(released, keys, tmp_path, capsys):
    names = files_of(released)
    assert len(names) >= 8
    for i, name in enumerate(names):     # every file of the release, the manifest and signature too
        model_dir = copy(released, tmp_path / str(i))
        data = bytearray((model_dir / name).read_bytes())
        data[len(data) // 2] ^= 0x01        # one bit of one byte, mid-file
        (model_dir / name).write_bytes(bytes(data))
        assert main(["verify", str(model_dir), "--pubkey", str(keys / "publisher.pub")]) == 1
        err = capsys.readouterr().err
        if name == release.SIGNATURE:       # a changed signature: the manifest's check fails
            assert f"{release.MANIFEST}:" in err or f"{release.SIGNATURE}:" in err, err
        else:
            assert f"{name}:" in err, err
        if name not in (release.MANIFEST, release.SIGNATURE):
            assert "differs from the release" in err


def test_added_and_removed_files_are_named(released, keys, tmp_path):
    model_dir = copy(released, tmp_path)
    (model_dir / "extra.bin").write_bytes(b"\0")
    with pytest.raises(release.VerifyError) as e:
        release.verify(model_dir, keys / "publisher.pub")
    assert e.value.path == "extra.bin" and "added after signing" in str(e.value)
    (model_dir / "extra.bin").unlink()
    (model_dir / "config.json").unlink()
    with pytest.raises(release.VerifyError) as e:
        release.verify(model_dir, keys / "publisher.pub")
    assert e.value.path == "config.json" and "missing" in str(e.value)
    (model_dir / "link").symlink_to("/etc/hostname")
    with pytest.raises(release.VerifyError, match="symbolic link"):
        release.verify(model_dir, keys / "publisher.pub")


def test_a_rewritten_manifest_or_a_wrong_key_fails(released, keys, tmp_path):
    with pytest.raises(release.VerifyError, match="not by the given key") as e:
        release.verify(released, keys / "stranger.pub")
    assert e.value.path == release.SIGNATURE
    # a forger edits a file and rewrites its hash in the manifest: the signature no longer holds
    model_dir = copy(released, tmp_path)
    (model_dir / "config.json").write_text((model_dir / "config.json").read_text().replace("64", "65", 1))
    manifest = json.loads((model_dir / release.MANIFEST).read_text())
    manifest["files"]["config.json"] = {"bytes": (model_dir / "config.json").stat().st_size,
                                        "sha256": sha256(model_dir / "config.json")}
    (model_dir / release.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    with pytest.raises(release.VerifyError, match="signature does not verify") as e:
        release.verify(model_dir, keys / "publisher.pub")
    assert e.value.path == release.MANIFEST
    # a forger who re-signs with a key of their own is caught by the fingerprint
    shutil.copy(released / "config.json", model_dir / "config.json")
    release.release(model_dir, keys / "stranger")
    with pytest.raises(release.VerifyError, match="not by the given key"):
        release.verify(model_dir, keys / "publisher.pub")
    # a directory whose files differ from the model's own record (lamina.json) is never released,
    # and the refusal leaves the release that was there as it was
    before = (model_dir / release.MANIFEST).read_bytes()
    (model_dir / "config.json").write_text((model_dir / "config.json").read_text().replace("64", "65", 1))
    with pytest.raises(LaminaError, match="lamina.json recorded"):
        release.release(model_dir, keys / "stranger")
    assert (model_dir / release.MANIFEST).read_bytes() == before


def test_an_unreleased_directory_fails(released, keys, tmp_path):
    model_dir = copy(released, tmp_path)
    (model_dir / release.SIGNATURE).unlink()
    with pytest.raises(release.VerifyError, match="was not released") as e:
        release.verify(model_dir, keys / "publisher.pub")
    assert e.value.path == release.SIGNATURE
    with pytest.raises(LaminaError, match="no such key file"):
        release.release(model_dir, keys / "absent")
    assert os.path.exists(model_dir / release.MANIFEST)     # a refused release changes nothing
