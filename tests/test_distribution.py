"""The distribution: import names, the built wheel in a fresh venv, licence metadata.

The repository keeps the folders training/ and export/ (the layout the project was asked for), but they install as
`ctmwa_training` and `ctmwa_export` (pyproject.toml [tool.setuptools] package-dir): a wheel that claimed the generic
names `training` or `export` would collide with any other distribution or user module of that name (an Airflow
deployment puts its dags/ and plugins/ folders on sys.path). With the repository root on sys.path the folders are
importable under their old names too, so these tests read the source: nothing may use the old names.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMPORT_NAMES = {"training": "ctmwa_training", "export": "ctmwa_export"}  # folder -> import name
OLD = tuple(IMPORT_NAMES)

# Everything of the repository that names modules: source, scripts, build and docs files.
SCANNED_FOLDERS = ("ctmwa_batch", "training", "export", "tests", "bench", "demo", "dags", "fixtures", "docs", ".ci")
SCANNED_FILES = ("Makefile", "pyproject.toml", "mkdocs.yml", "README.md", ".pre-commit-config.yaml")
TEXT_SUFFIXES = {".py", ".sh", ".md", ".toml", ".yml", ".yaml", ".cfg", ".txt", ""}


def _submodules(folder: str) -> set[str]:
    root = ROOT / folder
    return {p.stem for p in root.glob("*.py") if p.stem != "__init__"} | {
        p.parent.name for p in root.glob("*/__init__.py")
    }


# A dotted reference to one of the old packages' modules: `training.meta`, "export.release", `python -m training.cli`,
# not preceded by a word, a dot or a slash (so tests.training.x, tests/training/x and cfg.training.lr are not hits).
OLD_REFERENCE = re.compile(
    r"(?<![\w./-])(?:training\.(?:train|" + "|".join(sorted(_submodules("training"))) + r")"
    r"|export\.(?:" + "|".join(sorted(_submodules("export"))) + r"))\b"
)


def _scanned() -> list[Path]:
    files = [ROOT / name for name in SCANNED_FILES if (ROOT / name).is_file()]
    for folder in SCANNED_FOLDERS:
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.is_file() and p.suffix in TEXT_SUFFIXES]
    return [p for p in files if "__pycache__" not in p.parts and p != Path(__file__).resolve()]


def test_no_source_imports_training_or_export_by_the_old_name():
    bad = []
    for path in _scanned():
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            bad += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in OLD]
    assert not bad, "imports by the old names (use ctmwa_training / ctmwa_export):\n" + "\n".join(bad)


def test_no_file_names_a_module_by_the_old_name():
    """Strings count too: `python -m training.prepare`, importlib targets, monkeypatch targets, docs, scripts."""
    assert OLD_REFERENCE.search("python -m training.prepare") and OLD_REFERENCE.search('"export.release"')
    assert not OLD_REFERENCE.search("tests.training.datasets.raw") and not OLD_REFERENCE.search("cfg.training.lr")
    bad = [
        f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}"
        for path in _scanned()
        for text in [path.read_text(errors="replace")]
        for m in OLD_REFERENCE.finditer(text)
    ]
    assert not bad, "old module names (use ctmwa_training / ctmwa_export):\n" + "\n".join(bad)


def _setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed_for_the_wheel():
    config = _setuptools_config()
    folders = {name: Path(folder) for name, folder in config["package-dir"].items()}
    assert set(folders) == {"ctmwa_batch", *IMPORT_NAMES.values()}
    on_disk = {
        ".".join((name, *init.parent.relative_to(ROOT / folder).parts))
        for name, folder in folders.items()
        for init in (ROOT / folder).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk == set(config["packages"]), (
        "pyproject.toml [tool.setuptools] packages must list every package folder: "
        f"missing {sorted(on_disk - set(config['packages']))}, extra {sorted(set(config['packages']) - on_disk)}"
    )


def _build(tmp: Path) -> tuple[Path, Path]:
    """sdist and wheel (the wheel built from the sdist, as `python -m build` does), from a copy of the sources so
    that the build's egg-info and build/ folders never land in the checkout. No isolation: no network."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
        shutil.copy2(ROOT / name, src / name)
    for folder in ("ctmwa_batch", "training", "export"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    return sdist, wheel


def _fresh_venv(tmp: Path) -> Path:
    """A new venv whose own site-packages is empty; the running interpreter's site-packages (the dev or CI .venv)
    reach it through a .pth file, for the dependencies only: nothing is installed from a network. Its .pth files
    (the editable install's finder among them) are not processed there: a .pth line only extends sys.path."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (purelib,) = (venv / "lib").glob("python*/site-packages")
    # site-packages folders of the running interpreter, and any a .pth of it added (where a venv is layered the same way)
    dirs = dict.fromkeys([*site.getsitepackages(), *(p for p in sys.path if Path(p).name == "site-packages")])
    (purelib / "_dev_dependencies.pth").write_text("\n".join(dirs) + "\n")
    return venv


@pytest.mark.slow
def test_the_built_wheel_installs_into_a_fresh_venv(tmp_path: Path):
    sdist, wheel = _build(tmp_path)

    with zipfile.ZipFile(wheel) as z:
        dist_info = next(n.split("/")[0] for n in z.namelist() if n.split("/")[0].endswith(".dist-info"))
        record = [row[0] for row in csv.reader(z.read(f"{dist_info}/RECORD").decode().splitlines())]
        metadata = z.read(f"{dist_info}/METADATA").decode()
        top_level = (
            z.read(f"{dist_info}/top_level.txt").decode().split() if f"{dist_info}/top_level.txt" in record else []
        )
    tops = {path.split("/")[0] for path in record}
    assert tops == {"ctmwa_batch", "ctmwa_training", "ctmwa_export", dist_info}, tops
    assert not set(top_level) & set(OLD), top_level
    assert {"ctmwa_training/meta.py", "ctmwa_training/datasets/mvsa.py", "ctmwa_export/release.py"} <= set(record)
    assert "License-Expression: Apache-2.0" in metadata and f"{dist_info}/licenses/LICENSE" in record
    assert "ctmwa_batch/airflow/provider.py" in record

    venv = _fresh_venv(tmp_path)
    python, bin_ = venv / "bin" / "python", venv / "bin"
    # no PYTHONPATH (the checkout must not be on the path) and a cwd outside the checkout
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"AIRFLOW_HOME": str(tmp_path / "airflow")}
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    result = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir", "-q", wheel], **run
    )
    assert result.returncode == 0, result.stderr

    result = subprocess.run([bin_ / "ctmwa-batch", "--help"], **run)
    assert result.returncode == 0 and "usage: ctmwa-batch" in result.stdout, result.stderr
    for script in ("ctmwa-train", "ctmwa-export"):
        result = subprocess.run([bin_ / script, "--help"], **run)
        assert result.returncode == 0 and f"usage: {script}" in result.stdout, result.stderr

    probe = (
        "import importlib.util, json, ctmwa_batch, ctmwa_batch.airflow, ctmwa_training, ctmwa_export\n"
        "from ctmwa_batch.airflow import score_partition\n"  # imports Airflow (present through the .pth)
        "print(json.dumps({'files': [m.__file__ for m in (ctmwa_batch, ctmwa_training, ctmwa_export)],\n"
        "    'old': [importlib.util.find_spec(n) is not None for n in ('training', 'export')],\n"
        "    'group': score_partition.__module__}))"
    )
    result = subprocess.run([python, "-c", probe], **run)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    (purelib,) = (venv / "lib").glob("python*/site-packages")
    # imported from the fresh venv's copy, not through the dev venv's editable finder into the checkout
    assert all(Path(f).is_relative_to(purelib) for f in found["files"]), found["files"]
    assert found["old"] == [False, False]
    assert found["group"] == "ctmwa_batch.airflow.group"

    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"LICENSE", "pyproject.toml", "training/meta.py", "export/release.py", "ctmwa_batch/cli/main.py"} <= names
