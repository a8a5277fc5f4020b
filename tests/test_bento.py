"""The bento's one definition: bentofile.yaml at the root, used as is by ``deploykit build``.

``bentoml build`` at a checkout's root and ``deploykit build`` must make the same bento: the
same service, the same files, the same requirements (without torch), with no fallback to
BentoML's legacy (v1) layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from deploykit.serve import build

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "optimum")


def test_the_package_ships_the_root_bentofile_unchanged():
    assert build.TEMPLATE == ROOT / "deploykit" / "serve" / "bentofile.yaml"
    assert build.TEMPLATE.read_bytes() == (ROOT / "bentofile.yaml").read_bytes(), \
        "deploykit/serve/bentofile.yaml must be a copy of the root bentofile.yaml: cp bentofile.yaml deploykit/serve/"


def test_bento_requirements_are_the_base_dependencies():
    spec = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert spec["python"]["packages"] == project["dependencies"]
    assert not [p for p in spec["python"]["packages"] if p.startswith(HEAVY)]
    assert "wheels" not in spec["python"]  # bento v2 has none: BentoML would fall back to v1
    assert {"name": "DEPLOYKIT_ARTIFACT", "value": build.ARTIFACT_DIR} in spec["envs"]
    assert f"{build.ARTIFACT_DIR}/**" in spec["include"]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}


def _checkout(tmp: Path) -> Path:
    """A copy of the checkout's root as the bentofile sees it (the real root stays untouched)."""
    root = tmp / "checkout"
    root.mkdir()
    shutil.copy2(ROOT / "bentofile.yaml", root / "bentofile.yaml")
    shutil.copytree(ROOT / "deploykit", root / "deploykit", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _files(bento: Path) -> dict[str, str]:
    """{path under the bento: sha256} for what the bento serves from and installs."""
    out = {}
    for path in sorted([*(bento / "src").rglob("*"), *(bento / "env" / "python").rglob("*")]):
        if path.is_file() and path.name != "bentofile.yaml":  # BentoML's record of the build's options
            out[str(path.relative_to(bento))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
def test_bentoml_build_at_the_root_matches_deploykit_build(serve_artifact, tmp_path):
    home = tmp_path / "bentoml"
    root = _checkout(tmp_path)
    cli = [sys.executable, "-m", "deploykit"]

    # --context at a checkout's root writes only the trimmed artifact: the rest is already there.
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    staged = subprocess.run([*cli, "build", str(serve_artifact), "--context", str(root)],
                            capture_output=True, text=True, env=_env(home))
    assert staged.returncode == 0, staged.stderr[-3000:]
    written = sorted(set(p.relative_to(root) for p in root.rglob("*")) - set(before))
    assert written and all(p.parts[0] == "artifact" for p in written)
    again = subprocess.run([*cli, "build", str(serve_artifact), "--context", str(root)],
                           capture_output=True, text=True, env=_env(home))
    assert again.returncode == 2 and "already exists" in again.stderr

    bare = subprocess.run([sys.executable, "-m", "bentoml", "build", "--version", "root"],
                          cwd=root, capture_output=True, text=True, env=_env(home))
    assert bare.returncode == 0, bare.stderr[-3000:]
    ours = subprocess.run([*cli, "build", str(serve_artifact), "--tag", "deploykit-classifier:ours"],
                          capture_output=True, text=True, env=_env(home))
    assert ours.returncode == 0, ours.stderr[-3000:]
    for proc in (bare, ours):
        assert "not supported by bento v2" not in proc.stdout + proc.stderr

    bentos = home / "bentos" / "deploykit-classifier"
    a, b = bentos / "root", bentos / "ours"
    info_a, info_b = (yaml.safe_load((x / "bento.yaml").read_text()) for x in (a, b))
    for key in ("service", "entry_service", "envs", "labels"):
        assert info_a[key] == info_b[key], key
    assert info_a["image"]["python_requirements"] == info_b["image"]["python_requirements"]
    assert _files(a) == _files(b)
    requirements = (a / "env" / "python" / "requirements.txt").read_text().lower()
    assert "onnxruntime" in requirements and not [h for h in HEAVY if h in requirements]

    # The same trimmed artifact: only the default variant, a manifest listing exactly its files.
    packed = a / "src" / "artifact"
    manifest = json.loads((packed / "manifest.json").read_text())
    default = json.loads((Path(serve_artifact) / "manifest.json").read_text())["default_variant"]
    assert list(manifest["variants"]) == [default]
    assert sorted(manifest["files"]) == sorted(p.name for p in packed.iterdir() if p.name != "manifest.json")
