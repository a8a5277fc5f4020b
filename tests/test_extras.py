"""The extras as the installed metadata declares them, and the help a missing one gets."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from deploykit import cli, extras

ROOT = Path(__file__).resolve().parents[1]


def test_extras_are_read_from_the_installed_metadata():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras.declared_extras()) == set(declared)
    assert extras.missing("dev") == []  # this environment runs the tests
    assert set(cli.NEEDS.values()) <= set(declared)


@pytest.mark.parametrize("module,extra", [
    # pyarrow: deploykit[ray] lists it itself and is torch-free, so it is smaller than [train]
    ("torch", "train"), ("sklearn.metrics", "train"), ("pyarrow.parquet", "ray"), ("ray.data", "ray"),
    ("tritonclient.http", "demo"), ("geventhttpclient", "demo"),  # via tritonclient[http]
    ("kubernetes_validate", "k8s"), ("aiohttp", "bench"), ("no_such_module", None), (None, None),
])
def test_a_module_maps_to_the_smallest_extra_that_installs_it(module, extra):
    assert extras.extra_for_module(module) == extra


def test_demo_needs_train_through_its_self_reference(monkeypatch):
    monkeypatch.setattr(extras, "_installed", lambda name: name != "torch")
    assert extras.missing("train") == extras.missing("demo") == ["torch>=2.4"]
    with pytest.raises(extras.MissingExtraError, match=r"deploykit demo needs .*deploykit\[demo\].*torch"):
        extras.require("demo", "demo")


def test_cli_names_the_extra_and_exits_2(monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(extras, "_installed", lambda name: name != "scikit-learn")
    assert cli.main(["train", "--data", "tweets", "--out", str(tmp_path / "run")]) == 2
    assert "pip install 'deploykit[train]'" in caplog.text and "scikit-learn" in caplog.text
    assert not (tmp_path / "run").exists()


def test_cli_maps_a_failed_import_to_its_extra_and_reraises_others(monkeypatch, caplog):
    def fails(name):
        def func(args):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return func

    parser = cli.build_parser
    for name, expected in (("pyarrow", 2), ("no_such_module", None)):
        monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), fails(name)))
        if expected is None:
            with pytest.raises(ModuleNotFoundError):
                cli.main(["triton", "artifact", "--out", "repo"])
        else:
            assert cli.main(["triton", "artifact", "--out", "repo"]) == expected
            assert "'pyarrow'" in caplog.text and "pip install 'deploykit[ray]'" in caplog.text


def _with_func(parser, func):
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices["triton"].set_defaults(func=func)
    return parser
