"""Packaging: `pip install .` gives a working `imcap_hub` (with its demo model) and nothing else;
pyproject.toml agrees with requirements*.txt, imcap_hub.__version__ and the LICENSE."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import imcap_hub
from imcap_hub.demo import DEMO_MODEL_DIR
from model_card import DEFAULT_LICENSE

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
# What a clone holds that is no source: left out of the copy that pip installs from.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "runs", "artifacts", "__pycache__", ".*_cache", ".benchmarks", "build",
    "*.egg-info", "out", "flagged", ".gradio",
)  # fmt: skip


def _requirements(path: Path) -> list[str]:
    """The requirement lines of a requirements file, comments and `-r` includes left out."""
    lines = (line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def _normalised(requirements: list[str]) -> list[str]:
    """Requirements in one spelling (`huggingface_hub==2.4.0` -> `huggingface-hub==2.4.0`)."""
    parsed = [Requirement(r) for r in requirements]
    return sorted(f"{canonicalize_name(r.name)}{r.specifier}" for r in parsed)


def test_dependencies_are_the_requirements_txt_pins():
    assert _normalised(PROJECT["dependencies"]) == _normalised(
        _requirements(ROOT / "requirements.txt")
    )


def test_extras_together_are_what_requirements_dev_txt_adds():
    dev_file = ROOT / "requirements-dev.txt"
    assert "-r requirements.txt" in dev_file.read_text(encoding="utf-8")
    extras = PROJECT["optional-dependencies"]
    assert set(extras) == {"training", "fast", "dev"}
    # dev = training + fast (the int8 encoder runtime, which the tests run) + test and lint tools
    assert {"imcap[training]", "imcap[fast]"} <= set(extras["dev"])
    dev_only = [r for r in extras["dev"] if canonicalize_name(Requirement(r).name) != "imcap"]
    assert _normalised(extras["training"] + extras["fast"] + dev_only) == _normalised(
        _requirements(dev_file)
    )
    for extra in ("training", "fast"):
        assert not {canonicalize_name(Requirement(r).name) for r in extras[extra]} & {
            "pytest",
            "ruff",
            "playwright",
        }


def test_version_comes_from_imcap_hub():
    assert PROJECT["dynamic"] == ["version"] and "version" not in PROJECT
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "imcap_hub.__version__"}
    assert imcap_hub.__version__.count(".") == 2


def test_license_file_pyproject_and_cards_agree():
    assert DEFAULT_LICENSE == "apache-2.0"
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert PROJECT["license"] == {"text": "Apache-2.0"}
    assert PROJECT["license"]["text"].lower() == DEFAULT_LICENSE
    for card in (ROOT / "README.md", DEMO_MODEL_DIR / "README.md"):
        assert f"\nlicense: {DEFAULT_LICENSE}\n" in card.read_text(encoding="utf-8"), card


# Run in the fresh venv, from a folder that is not the clone: where imcap_hub came from, what the
# installed distribution holds, and a caption from the installed demo model.
CHECK = """
import importlib.metadata, importlib.util, json, sys
import numpy as np
import imcap_hub
from imcap_hub import ImageCaptioner
from imcap_hub.demo import DEMO_MODEL_DIR

dist = importlib.metadata.distribution("imcap")
model = ImageCaptioner.from_pretrained(DEMO_MODEL_DIR, runtime="keras")
print(json.dumps({
    "prefix": sys.prefix,
    "file": imcap_hub.__file__,
    "version": imcap_hub.__version__,
    "dist_version": dist.version,
    "license": dist.metadata["License"],
    "top_level": sorted({f.parts[0] for f in dist.files}),
    "requires": dist.requires,
    "demo_files": sorted(p.name for p in DEMO_MODEL_DIR.iterdir()),
    "others": {n: importlib.util.find_spec(n) is not None for n in ("training", "model_card", "app")},
    "caption": model.caption(np.zeros((64, 64, 3), np.uint8))[0].text,
}))
"""


def test_pip_install_in_a_fresh_venv(tmp_path):
    """`pip install .` from a copy of the clone into a fresh venv, then imcap_hub from elsewhere.

    Offline and quick: the venv sees the system site-packages (`--system-site-packages`), where the
    pinned dependencies are already installed, and pip may not look at an index (`--no-index`), so
    a dependency that is missing or at another version fails the install instead of downloading
    gigabytes of TensorFlow. `--no-build-isolation` builds with the installed setuptools (an
    isolated build would download setuptools). The venv has no pip of its own (`--without-pip`,
    no ensurepip step): the system's pip, run by the venv's python, installs into the venv.
    """
    source, venv, elsewhere = tmp_path / "clone", tmp_path / "venv", tmp_path / "elsewhere"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env["PYTHONNOUSERSITE"] = "1"

    def run(*args: str | Path, cwd: Path) -> str:
        done = subprocess.run(
            [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{args[:4]} failed:\n{(done.stdout + done.stderr)[-4000:]}"
        return done.stdout

    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv, cwd=tmp_path)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    pip = [python, "-m", "pip", "--disable-pip-version-check", "--no-input", "install"]
    run(*pip, "--no-index", "--no-build-isolation", "--no-cache-dir", source, cwd=elsewhere)
    found = json.loads(run(python, "-c", CHECK, cwd=elsewhere).strip().splitlines()[-1])

    site_packages = Path(found["prefix"]).resolve()
    assert site_packages == venv.resolve()
    installed = Path(found["file"]).resolve()
    assert installed.is_relative_to(site_packages) and "site-packages" in installed.parts
    assert not installed.is_relative_to(ROOT) and not installed.is_relative_to(source)
    assert found["version"] == found["dist_version"] == imcap_hub.__version__
    assert found["license"] == PROJECT["license"]["text"]
    assert found["top_level"] == [f"imcap-{imcap_hub.__version__}.dist-info", "imcap_hub"]
    # (a top-level `tests` may come from some other distribution's site-packages: top_level
    # above is what says that this one ships none)
    assert found["others"] == dict.fromkeys(("training", "model_card", "app"), False)
    assert found["demo_files"] == sorted(p.name for p in DEMO_MODEL_DIR.iterdir())
    assert {"config.json", "vocab.json", "model.safetensors", "README.md", "metrics.json"} <= set(
        found["demo_files"]
    )
    runtime = [r for r in found["requires"] if "extra ==" not in r]
    assert _normalised(runtime) == _normalised(_requirements(ROOT / "requirements.txt"))
    assert found["caption"].strip()
