"""The model registry: published bundles under a models root and the `CURRENT` pointer that scoring follows.

    {models_root}/{model_version}/     one complete bundle per version (ctmwa_batch.bundle layout), never changed
    {models_root}/CURRENT              one line: the version that "current" means

A bundle is copied into a hidden staging folder and renamed into place, so a version folder is either absent or
complete; `CURRENT` is written to a temporary file and renamed over the old one, so a reader sees the old version
or the new one, never a torn file. A scoring run resolves "current" once, when it plans, and uses that bundle to the
end: moving the pointer mid-run does not mix two models in one partition. The models root must be a filesystem
every worker mounts (ONNX Runtime loads the graphs from local paths); rename is atomic on POSIX filesystems.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from ctmwa_batch.bundle import MANIFEST, Bundle, load_bundle
from ctmwa_batch.errors import BundleError, CtmwaError
from ctmwa_batch.settings import CURRENT

logger = logging.getLogger(__name__)

POINTER = "CURRENT"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RegistryError(CtmwaError):
    """A models root has no such version, no CURRENT pointer, or a pointer to a version that is not there."""


def _check_version_name(version: str) -> None:
    if not _VERSION.match(version or ""):
        raise RegistryError(f"model version {version!r} is not a valid folder name (letters, digits, '.', '_', '-')")


def list_versions(models_root: str | Path) -> list[str]:
    """The published versions (folders with a manifest), sorted; staging folders and other files are left out."""
    root = Path(models_root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file())


def current_version(models_root: str | Path) -> str | None:
    """The version `CURRENT` names, or None when nothing was made current yet."""
    try:
        text = (Path(models_root) / POINTER).read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def resolve(models_root: str | Path, version: str = CURRENT) -> Path:
    """The bundle folder of `version` ("current" follows the pointer); RegistryError names what exists."""
    root = Path(models_root)
    if version == CURRENT:
        pointed = current_version(root)
        if pointed is None:
            raise RegistryError(
                f"no current model under {str(root)!r} (no {POINTER} file); publish one with the ctmwa_export_model DAG "
                f"or ctmwa_batch.registry.publish, or name a version (published: {list_versions(root) or 'none'})"
            )
        version = pointed
        where = f"{POINTER} of {str(root)!r} names {version!r}, but"
    else:
        where = "model version"
    _check_version_name(version)
    path = root / version
    if not (path / MANIFEST).is_file():
        raise RegistryError(
            f"{where} {version!r} is not published under {str(root)!r}; published versions: {list_versions(root) or 'none'}"
        )
    return path


def set_current(models_root: str | Path, version: str) -> str | None:
    """Point `CURRENT` at a published version atomically (temp file + rename); returns the previous version."""
    root = Path(models_root)
    resolve(root, version)  # fails unless published
    previous = current_version(root)
    tmp = root / f".{POINTER}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "w") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, root / POINTER)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(root)
    logger.info("%s of %s: %s -> %s", POINTER, root, previous, version)
    return previous


def publish(bundle_dir: str | Path, models_root: str | Path, *, make_current: bool = True) -> dict[str, Any]:
    """Copy a verified, scoring-ready bundle to {models_root}/{model_version}/ and (by default) make it current.

    Idempotent: publishing a version that is already there checks the copy and only moves the pointer, so a
    retried task is safe. Returns {"model_version", "bundle_dir", "current", "previous"}.
    """
    bundle = load_bundle(bundle_dir)
    if not (bundle.has_head and bundle.has_encoders):
        raise BundleError(
            f"bundle {str(bundle_dir)!r} is not scoring-ready (files {sorted(bundle.files)}); only bundles with both "
            "encoders, the tokenizer and head.onnx are published"
        )
    version = bundle.model_version
    root = Path(models_root)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / version
    if dest.exists():
        existing = load_bundle(dest)  # verifies every file: a damaged copy is an error, not silently kept
        if existing.model_version != version:
            raise RegistryError(f"{str(dest)!r} holds model version {existing.model_version}, not {version}; remove it")
        logger.info("model %s is already published at %s", version, dest)
    else:
        staging = root / f".staging-{version}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(bundle.root, staging)
            load_bundle(staging)  # the copy is what gets published: check it, not the source
            try:
                os.rename(staging, dest)
            except OSError:
                if not dest.exists():
                    raise
                logger.info("model %s was published concurrently; keeping that copy", version)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        _fsync_dir(root)
        logger.info("published model %s at %s", version, dest)
    previous = current_version(root)
    if make_current:
        previous = set_current(root, version)
    return {"model_version": version, "bundle_dir": str(dest), "current": current_version(root) == version, "previous": previous}


def describe(models_root: str | Path) -> list[dict[str, Any]]:
    """One entry per published version, oldest first: version, created_at, labels, training metrics, whether current."""
    current = current_version(models_root)
    out = []
    for version in list_versions(models_root):
        try:
            b: Bundle = load_bundle(Path(models_root) / version, verify=False)
            manifest = b.manifest
        except BundleError as e:
            out.append({"model_version": version, "error": str(e), "current": version == current})
            continue
        out.append(
            {
                "model_version": version,
                "current": version == current,
                "created_at": manifest.get("created_at"),
                "labels": manifest.get("labels"),
                "encoder": (manifest.get("encoder") or {}).get("source"),
                "training_metrics": manifest.get("training_metrics") or {},
            }
        )
    return sorted(out, key=lambda e: (e.get("created_at") or "", e["model_version"]))


def _fsync_dir(path: Path) -> None:
    # Make the rename itself durable; not every filesystem lets a folder be opened for that.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`ctmwa-batch models` arguments: list | current | publish BUNDLE | set-current VERSION."""
    parser.add_argument("--models-root", required=True, type=Path, help="the models root (folder of published bundles)")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="published versions, oldest first, with the current one marked")
    sub.add_parser("current", help="print the version CURRENT names")
    p = sub.add_parser("publish", help="copy a bundle in (verified) and make it current")
    p.add_argument("bundle", type=Path, help="a complete bundle folder (encoders, tokenizer, head)")
    p.add_argument("--no-current", action="store_true", help="publish without moving CURRENT")
    s = sub.add_parser("set-current", help="move CURRENT to a published version (a rollback, too)")
    s.add_argument("version")


def run(args: argparse.Namespace) -> int:
    """Run one registry action and print its result as JSON (current: the bare version)."""
    if args.action == "list":
        print(json.dumps(describe(args.models_root), indent=2))
    elif args.action == "current":
        print(resolve(args.models_root, CURRENT).name)
    elif args.action == "publish":
        print(json.dumps(publish(args.bundle, args.models_root, make_current=not args.no_current), indent=2))
    else:
        previous = set_current(args.models_root, args.version)
        print(json.dumps({"current": args.version, "previous": previous}))
    return 0
