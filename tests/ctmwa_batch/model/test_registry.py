"""ctmwa_batch.model.registry: publish, the atomic CURRENT pointer, resolving "current", errors naming what exists."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from ctmwa_batch.errors import BundleError
from ctmwa_batch.model import registry
from ctmwa_batch.model.bundle import load_bundle
from ctmwa_batch.model.registry import RegistryError


def _place(encoder_bundle: Path, models_root: Path, name: str) -> Path:
    """A bundle folder under the models root (a published version, as far as the pointer is concerned)."""
    dest = models_root / name
    shutil.copytree(encoder_bundle, dest)
    return dest


def test_resolve_without_current_says_how_to_publish(tmp_path):
    with pytest.raises(
        RegistryError, match=r"no current model under .*no CURRENT file.*ctmwa_export_model.*published: none"
    ):
        registry.resolve(tmp_path)
    assert registry.current_version(tmp_path) is None
    assert registry.list_versions(tmp_path / "absent") == []


def test_unknown_version_lists_the_published_ones(tmp_path, encoder_bundle):
    _place(encoder_bundle, tmp_path, "v1")
    _place(encoder_bundle, tmp_path, "v2")
    with pytest.raises(RegistryError, match=r"model version 'v3' is not published .*\['v1', 'v2'\]"):
        registry.resolve(tmp_path, "v3")
    with pytest.raises(RegistryError, match="not a valid folder name"):
        registry.resolve(tmp_path, "../v1")
    assert registry.resolve(tmp_path, "v2") == tmp_path / "v2"


def test_set_current_moves_the_pointer_and_resolve_follows(tmp_path, encoder_bundle):
    _place(encoder_bundle, tmp_path, "v1")
    _place(encoder_bundle, tmp_path, "v2")
    assert registry.set_current(tmp_path, "v1") is None
    assert (tmp_path / "CURRENT").read_text() == "v1\n"
    assert registry.resolve(tmp_path) == tmp_path / "v1"
    assert registry.set_current(tmp_path, "v2") == "v1"  # returns the previous one (for a rollback)
    assert registry.resolve(tmp_path, "current") == tmp_path / "v2"
    with pytest.raises(RegistryError, match="'v9' is not published"):
        registry.set_current(tmp_path, "v9")
    assert registry.current_version(tmp_path) == "v2"  # a refused move leaves the pointer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT", "v1", "v2"]  # no temporary files left


def test_pointer_to_a_removed_version_is_a_clear_error(tmp_path, encoder_bundle):
    _place(encoder_bundle, tmp_path, "v1")
    registry.set_current(tmp_path, "v1")
    shutil.rmtree(tmp_path / "v1")
    with pytest.raises(RegistryError, match="CURRENT of .* names 'v1', but 'v1' is not published"):
        registry.resolve(tmp_path)


def test_a_failed_pointer_write_leaves_the_old_pointer(tmp_path, encoder_bundle, monkeypatch):
    _place(encoder_bundle, tmp_path, "v1")
    _place(encoder_bundle, tmp_path, "v2")
    registry.set_current(tmp_path, "v1")

    def crash(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(registry.os, "replace", crash)
    with pytest.raises(OSError, match="disk went away"):
        registry.set_current(tmp_path, "v2")
    assert (tmp_path / "CURRENT").read_text() == "v1\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_readers_never_see_a_torn_pointer(tmp_path, encoder_bundle):
    for name in ("v1", "v2"):
        _place(encoder_bundle, tmp_path, name)
    registry.set_current(tmp_path, "v1")
    seen: set[str | None] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(registry.current_version(tmp_path))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for k in range(100):
            registry.set_current(tmp_path, "v2" if k % 2 else "v1")
    finally:
        stop.set()
        reader.join()
    assert seen <= {"v1", "v2"}


def test_publish_refuses_a_bundle_without_head(tmp_path, encoder_bundle):
    with pytest.raises(BundleError, match="not scoring-ready .*head.onnx"):
        registry.publish(encoder_bundle, tmp_path / "models")
    assert registry.list_versions(tmp_path / "models") == []


def test_publish_refuses_a_damaged_bundle(tmp_path, encoder_bundle):
    damaged = tmp_path / "damaged"
    shutil.copytree(encoder_bundle, damaged)
    with open(damaged / "tokenizer.json", "a") as f:
        f.write(" ")
    with pytest.raises(BundleError, match="tokenizer.json: changed"):
        registry.publish(damaged, tmp_path / "models")


def test_cli_models_subcommand(tmp_path, encoder_bundle, capsys):
    from ctmwa_batch.cli.main import main

    _place(encoder_bundle, tmp_path, "v1")
    root = ["models", "--models-root", str(tmp_path)]
    assert main([*root, "current"]) == 2  # no CURRENT yet: a clear error, no traceback
    assert "RegistryError: no current model" in capsys.readouterr().err
    assert main([*root, "set-current", "v1"]) == 0
    assert json.loads(capsys.readouterr().out) == {"current": "v1", "previous": None}
    assert main([*root, "current"]) == 0
    assert capsys.readouterr().out.strip() == "v1"
    assert main([*root, "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["model_version"], e["current"]) for e in listed] == [("v1", True)]
    assert listed[0]["created_at"] == load_bundle(tmp_path / "v1").manifest["created_at"]
    assert main([*root, "publish", str(encoder_bundle)]) == 2  # encoders only: refused
    assert "not scoring-ready" in capsys.readouterr().err


def test_publish_copies_verifies_and_moves_current(tmp_path, full_bundle):
    models = tmp_path / "models"
    result = registry.publish(full_bundle, models, make_current=False)
    version = load_bundle(full_bundle).model_version
    assert result == {"model_version": version, "bundle_dir": str(models / version), "current": False, "previous": None}
    assert load_bundle(models / version).files == load_bundle(full_bundle).files
    assert registry.current_version(models) is None
    again = registry.publish(full_bundle, models)  # idempotent (a retried task): only the pointer moves
    assert again["current"] and registry.resolve(models) == models / version
    assert {p.name for p in models.iterdir()} == {"CURRENT", version}  # no staging folder left


def test_republishing_over_a_damaged_copy_fails(tmp_path, full_bundle):
    models = tmp_path / "models"
    version = registry.publish(full_bundle, models)["model_version"]
    (models / version / "head.onnx").write_bytes(b"not a graph")
    with pytest.raises(BundleError, match="head.onnx: changed"):
        registry.publish(full_bundle, models)
