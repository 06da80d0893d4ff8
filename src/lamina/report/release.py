"""Releases anyone can verify: a signed manifest of every file of a model directory.

    lamina release keygen --out KEY        # KEY (private, mode 0600) and KEY.pub
    lamina release MODEL_DIR --key KEY     # MODEL_DIR/release.json + MODEL_DIR/release.sig
    lamina verify MODEL_DIR --pubkey KEY.pub

`release.json` lists every file of the directory (path, bytes, sha256), the data ledger digests
the model's own record (`lamina.json`) names, the report's hash when the directory holds one, and
the code version. `release.sig` is an ed25519 signature (the `cryptography` package; RFC 8032)
over the exact bytes of `release.json`, with the signing key's fingerprint. `verify` checks the
signature first (so the manifest it then trusts is the one signed), then every file, and names the
first that differs, is missing, or was added. Keys are PEM files: PKCS#8 for the private key, never
readable by group or others (written so from the first byte, and refused if loosened), and
SubjectPublicKeyInfo for the public one, which `openssl pkeyutl -verify -rawin` reads too."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from datetime import datetime, timezone
from pathlib import Path

from ..errors import LaminaError
from ..files import atomic_file
from ..progress import Display, show_progress
from ..version import __version__

MANIFEST, SIGNATURE = "release.json", "release.sig"
FORMAT = "lamina-release/1"
REPORT_FILES = ("report.json", "report.md", "report.html")     # what `lamina report` writes


class VerifyError(LaminaError):
    """A release that does not verify; `path` names the first file at fault."""

    def __init__(self, path: str, why: str):
        super().__init__(f"{path}: {why}")
        self.path = path


def _hash(path: Path, shown: Display) -> str:
    """sha256 of a file, its bytes counted on `shown` as they are read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
            shown.advance(len(block))
    return h.hexdigest()


def fingerprint(public_raw: bytes) -> str:
    """sha256 of the raw 32-byte ed25519 public key, as "sha256:HEX"."""
    return "sha256:" + hashlib.sha256(public_raw).hexdigest()


def _serialization():
    from cryptography.hazmat.primitives import serialization
    return serialization


def keygen(out: str | Path) -> tuple[Path, Path]:
    """A new ed25519 key pair: `out` (private, PKCS#8 PEM, mode 0600, created so) and `out`.pub.
    Existing files are never overwritten."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    s = _serialization()
    private, public = Path(out), Path(f"{out}.pub")
    for p in (private, public):
        if p.exists() or p.is_symlink():
            raise LaminaError(f"{p}: already exists; a key is never overwritten (choose another path)")
    private.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    # O_EXCL: no race with another writer; mode 0600 from creation, whatever the umask allows more
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        private.unlink(missing_ok=True)
        raise
    pub = key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)
    with atomic_file(public) as tmp:
        tmp.write_bytes(pub)
        tmp.chmod(0o644)
    return private, public


def load_private_key(path: str | Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    path = Path(path)
    if not path.is_file():
        raise LaminaError(f"{path}: no such key file (make one with `lamina release keygen --out {path}`)")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise LaminaError(f"{path}: a private key readable by others (mode {stat.S_IMODE(mode):o}) is refused; "
                          f"chmod 600 {path}")
    try:
        key = _serialization().load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise LaminaError(f"{path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LaminaError(f"{path}: a {type(key).__name__.removeprefix('_')}, not an ed25519 key")
    return key


def load_public_key(path: str | Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    path = Path(path)
    if not path.is_file():
        raise LaminaError(f"{path}: no such public key file")
    try:
        key = _serialization().load_pem_public_key(path.read_bytes())
    except (ValueError, TypeError) as e:
        raise LaminaError(f"{path}: not a PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise LaminaError(f"{path}: not an ed25519 public key")
    return key


def _raw(public_key) -> bytes:
    s = _serialization()
    return public_key.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)


def directory_files(model_dir: Path) -> list[str]:
    """Every file under `model_dir` but the release's own two, as sorted POSIX relative paths.
    A symbolic link or anything else that is not a plain file or folder is refused by name: a
    release holds bytes, not pointers elsewhere."""
    out = []
    for root, dirs, files in os.walk(model_dir, followlinks=False):
        for name in sorted(dirs + files):
            p = Path(root) / name
            rel = p.relative_to(model_dir).as_posix()
            if p.is_symlink():
                raise VerifyError(rel, "a symbolic link; a release holds plain files only")
            if name in files and not p.is_file():
                raise VerifyError(rel, "not a plain file")
            if name in files and rel not in (MANIFEST, SIGNATURE):
                out.append(rel)
    return sorted(out)


def _ledger_digests(record: dict) -> list[str]:
    """Every `ledger_digest` anywhere in the model's lamina.json (pretraining's, post-training's)."""
    found: list[str] = []

    def walk(v) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "ledger_digest" and isinstance(x, str):
                    found.append(x)
                else:
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    walk(record)
    return sorted(set(found))


def build_manifest(model_dir: str | Path, public_raw: bytes, progress: bool = False) -> dict:
    """The manifest of a model directory as it is now. A directory whose files already differ
    from its own record (lamina.json's hashes) is refused: it would sign a damaged model."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise LaminaError(f"{model_dir}: not a model directory")
    names = directory_files(model_dir)
    if not names:
        raise LaminaError(f"{model_dir}: holds no files to release")
    sizes = {n: (model_dir / n).stat().st_size for n in names}
    with show_progress("hashing", sum(sizes.values()), enabled=progress, unit="B") as shown:
        files = {n: {"bytes": sizes[n], "sha256": _hash(model_dir / n, shown)} for n in names}
    record: dict = {}
    if "lamina.json" in files:
        try:
            record = json.loads((model_dir / "lamina.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LaminaError(f"{model_dir / 'lamina.json'}: not valid JSON ({e})") from None
        for name, digest in (record.get("files") or {}).items():
            if name in files and files[name]["sha256"] != digest:
                raise LaminaError(f"{model_dir / name}: differs from the hash lamina.json recorded when the "
                                  "model was written; the directory is damaged or was edited, so it is not released")
    report = next(({"file": n, "sha256": files[n]["sha256"]} for n in REPORT_FILES if n in files), None)
    return {"format": FORMAT, "model": model_dir.resolve().name,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lamina_version": __version__, "files": files, "ledger_digests": _ledger_digests(record),
            "report": report, "public_key": base64.b64encode(public_raw).decode(),
            "fingerprint": fingerprint(public_raw)}


def release(model_dir: str | Path, key_path: str | Path, *, progress: bool = False) -> dict:
    """Sign a model directory: write release.json and release.sig into it (each atomically;
    an earlier release is replaced). Returns the manifest."""
    model_dir = Path(model_dir)
    key = load_private_key(key_path)
    public_raw = _raw(key.public_key())
    manifest = build_manifest(model_dir, public_raw, progress)
    body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    signature = {"algorithm": "ed25519", "fingerprint": manifest["fingerprint"],
                 "signature": base64.b64encode(key.sign(body)).decode()}
    # the old pair goes first and the new signature last: a crash part way leaves a release that
    # fails to verify (no signature), never an old signature beside a new manifest
    (model_dir / SIGNATURE).unlink(missing_ok=True)
    (model_dir / MANIFEST).unlink(missing_ok=True)
    with atomic_file(model_dir / MANIFEST) as tmp:
        tmp.write_bytes(body)
    with atomic_file(model_dir / SIGNATURE) as tmp:
        tmp.write_text(json.dumps(signature, indent=2) + "\n")
    return manifest


def verify(model_dir: str | Path, pubkey_path: str | Path, *, progress: bool = False) -> dict:
    """Check a released directory against a public key; the manifest if every check holds, else a
    `VerifyError` naming the first file at fault (the signature, the manifest, or a model file)."""
    from cryptography.exceptions import InvalidSignature
    model_dir = Path(model_dir)
    public = load_public_key(pubkey_path)
    want = fingerprint(_raw(public))
    if not model_dir.is_dir():
        raise LaminaError(f"{model_dir}: not a directory")
    for name in (MANIFEST, SIGNATURE):
        if not (model_dir / name).is_file() or (model_dir / name).is_symlink():
            raise VerifyError(name, "missing; this directory was not released (`lamina release`)")
    body = (model_dir / MANIFEST).read_bytes()
    try:
        sig = json.loads((model_dir / SIGNATURE).read_text())
        signature = base64.b64decode(sig["signature"], validate=True)
        signer = sig["fingerprint"]
        if sig.get("algorithm") != "ed25519" or not isinstance(signer, str):
            raise ValueError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise VerifyError(SIGNATURE, "not a lamina release signature") from None
    if signer != want:
        raise VerifyError(SIGNATURE, f"signed by key {signer[:23]}…, not by the given key {want[:23]}…")
    try:
        public.verify(signature, body)
    except InvalidSignature:
        raise VerifyError(MANIFEST, "its signature does not verify: the manifest (or its signature) was "
                                    "changed after signing") from None
    manifest = json.loads(body)   # signed by the key: what it says is what was released
    if manifest.get("format") != FORMAT:
        raise VerifyError(MANIFEST, f"format {str(manifest.get('format'))[:40]} is not {FORMAT}")
    listed: dict = manifest["files"]
    present = set(directory_files(model_dir))
    for name in sorted(set(listed) | present):
        if name not in present:
            raise VerifyError(name, "missing: the release lists it")
        if name not in listed:
            raise VerifyError(name, "not in the release: added after signing")
        if (model_dir / name).stat().st_size != listed[name]["bytes"]:
            raise VerifyError(name, "differs from the release (its size)")
    with show_progress("verifying", sum(e["bytes"] for e in listed.values()), enabled=progress, unit="B") as shown:
        for name in sorted(listed):
            if _hash(model_dir / name, shown) != listed[name]["sha256"]:
                raise VerifyError(name, "differs from the release (sha256)")
    return manifest
