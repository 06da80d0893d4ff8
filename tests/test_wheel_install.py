"""A wheel of the checkout, installed on its own, runs training: the recipes ship inside the package.

The fresh environment gets the wheel with `--no-deps` and borrows the test environment's packages
through a .pth line (which adds that folder to sys.path without running its own .pth files, so the
editable install of the checkout stays out); everything runs from a folder outside the checkout."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _run(*cmd, cwd: Path, **env: str) -> str:
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **env}
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> Path:
    """A venv holding only lamina's wheel (built from a copy of the checkout's sources)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT / "src" / "lamina", source / "src" / "lamina",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", tmp / "dist", source, cwd=tmp)
    wheel = next((tmp / "dist").glob("lamina-*.whl"))
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
    purelib = Path(_run(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                        cwd=tmp).strip())
    (purelib / "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp)
    return venv


@pytest.mark.slow
def test_a_wheel_install_finds_every_built_in_recipe(wheel_env, tmp_path):
    found = json.loads(_run(wheel_env / "bin" / "python", "-c",
                            "import json, lamina\n"
                            "from lamina.recipes import KINDS, builtin_recipes\n"
                            "from lamina.train import train_recipe\n"
                            "from lamina.data import data_recipe\n"
                            "[train_recipe(n) for n in builtin_recipes('train')]\n"
                            "[data_recipe(n) for n in builtin_recipes('data')]\n"
                            "print(json.dumps({'lamina': lamina.__file__, **{k: {n: str(f) for n, f in "
                            "builtin_recipes(k).items()} for k in KINDS}}))", cwd=tmp_path))
    assert Path(found["lamina"]).is_relative_to(wheel_env)
    assert {"debug", "speedrun"} <= found["train"].keys() and "clean-small" in found["data"]
    assert all(Path(f).is_relative_to(wheel_env) for kind in ("train", "data") for f in found[kind].values())


@pytest.mark.slow
def test_a_wheel_install_trains_the_debug_recipe(wheel_env, shakespeare_corpus, tmp_path):
    _run(wheel_env / "bin" / "lamina", "train", "debug", "--data", shakespeare_corpus, "--out", "run", "--quiet",
         "max_steps=2", "eval_every=2", "eval_tokens=1024", "save_every=2", "sample_tokens=4", cwd=tmp_path)
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "config.json").is_file()


@pytest.mark.slow
def test_a_wheel_install_has_the_fetch_command(wheel_env, tmp_path):
    # the test environment's extracted sdist and distributions: nothing to download
    from lamina.data.sources import literature_home
    out = _run(wheel_env / "bin" / "lamina", "data", "fetch", cwd=tmp_path, LAMINA_DATA_HOME=str(literature_home()))
    assert "already there" in out and "distributions the recipe reads were already installed" in out
