"""The model registry: published bundles under a models root and the `CURRENT` pointer that scoring follows.

    {models_root}/{model_version}/     one complete bundle per version (ctmwa_batch.model.bundle layout), never changed
    {models_root}/CURRENT              one line: the version that "current" means

The models root is a local or shared folder, or a prefix in an object store (`s3://bucket/models`). On a filesystem a
bundle is copied into a hidden staging folder and renamed into place, and `CURRENT` is written to a temporary file and
renamed over the old one. On an object store a rename is a copy, so a version's files are uploaded first and its
`manifest.json` last: a version without a manifest is not published (a killed upload is invisible and a retry
completes it), and `CURRENT` is one small object written in one PUT (a reader sees the old version or the new one).
Either way a version is absent or complete and the pointer is never torn.

A scoring run resolves "current" once, when it plans, and uses that bundle to the end: moving the pointer mid-run
does not mix two models in one partition. ONNX Runtime loads graphs from local paths, so a worker copies a version
from an object store into a local cache once (`fetch_bundle`: keyed by model version and manifest digest, every
checksum verified before the copy is renamed into the cache) and reuses it afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from ctmwa_batch.errors import BundleError, CtmwaError
from ctmwa_batch.io import storage
from ctmwa_batch.model.bundle import MANIFEST, Bundle, copy_stream, load_bundle, read_remote_manifest
from ctmwa_batch.settings import CURRENT

logger = logging.getLogger(__name__)

POINTER = "CURRENT"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RegistryError(CtmwaError):
    """A models root has no such version, no CURRENT pointer, or a pointer to a version that is not there."""


def _check_version_name(version: str) -> None:
    if not _VERSION.match(version or ""):
        raise RegistryError(f"model version {version!r} is not a valid folder name (letters, digits, '.', '_', '-')")


def _remote(models_root: str | Path) -> bool:
    return storage.is_object_store(str(models_root))


def _read_text(location: str) -> str | None:
    """The content of a small object or file, None when it does not exist."""
    fs, path = storage.open_filesystem(location)
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode()
    except FileNotFoundError:
        return None


def list_versions(models_root: str | Path) -> list[str]:
    """The published versions (folders with a manifest), sorted; staging folders and other files are left out."""
    if not _remote(models_root):
        root = Path(models_root)
        if not root.is_dir():
            return []
        return sorted(
            p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
        )
    fs, path = storage.open_filesystem(str(models_root))
    entries = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    folders = [e for e in entries if e.type == pafs.FileType.Directory and not e.base_name.startswith(".")]
    manifests = fs.get_file_info([f"{e.path}/{MANIFEST}" for e in folders]) if folders else []
    return sorted(e.base_name for e, m in zip(folders, manifests) if m.type == pafs.FileType.File)


def current_version(models_root: str | Path) -> str | None:
    """The version `CURRENT` names, or None when nothing was made current yet."""
    text = (_read_text(storage.join(str(models_root), POINTER)) or "").strip()
    return text or None


def _published(models_root: str | Path, version: str) -> str | Path | None:
    """The location of a published version (its manifest exists), else None."""
    if not _remote(models_root):
        path = Path(models_root) / version
        return path if (path / MANIFEST).is_file() else None
    location = storage.join(str(models_root), version)
    fs, key = storage.open_filesystem(location)
    return location if fs.get_file_info(f"{key}/{MANIFEST}").type == pafs.FileType.File else None


def resolve(models_root: str | Path, version: str = CURRENT) -> Path | str:
    """The bundle of `version` ("current" follows the pointer): a folder (Path) under a local root, a location
    (s3://.../VERSION, str) under an object-store root; RegistryError names what exists."""
    root = str(models_root)
    if version == CURRENT:
        pointed = current_version(models_root)
        if pointed is None:
            raise RegistryError(
                f"no current model under {root!r} (no {POINTER} file); publish one with the ctmwa_export_model DAG "
                f"or ctmwa_batch.model.registry.publish, or name a version (published: {list_versions(models_root) or 'none'})"
            )
        version = pointed
        where = f"{POINTER} of {root!r} names {version!r}, but"
    else:
        where = "model version"
    _check_version_name(version)
    found = _published(models_root, version)
    if found is None:
        raise RegistryError(
            f"{where} {version!r} is not published under {root!r}; published versions: {list_versions(models_root) or 'none'}"
        )
    return found


def set_current(models_root: str | Path, version: str) -> str | None:
    """Point `CURRENT` at a published version atomically (temp file + rename); returns the previous version."""
    resolve(models_root, version)  # fails unless published
    previous = current_version(models_root)
    if _remote(models_root):
        # One small object in one PUT: a reader sees the old version or the new one (a rename there is a copy).
        fs, path = storage.open_filesystem(storage.join(str(models_root), POINTER))
        storage.write_object(fs, path, (version + "\n").encode())
        logger.info("%s of %s: %s -> %s", POINTER, models_root, previous, version)
        return previous
    root = Path(models_root)
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
    if _remote(models_root):
        dest_location = _upload(bundle, str(models_root))
        previous = current_version(models_root)
        if make_current:
            previous = set_current(models_root, version)
        return {
            "model_version": version,
            "bundle_dir": dest_location,
            "current": current_version(models_root) == version,
            "previous": previous,
        }
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
    return {
        "model_version": version,
        "bundle_dir": str(dest),
        "current": current_version(root) == version,
        "previous": previous,
    }


def describe(models_root: str | Path) -> list[dict[str, Any]]:
    """One entry per published version, oldest first: version, created_at, labels, training metrics, whether current."""
    current = current_version(models_root)
    out = []
    for version in list_versions(models_root):
        try:
            if _remote(models_root):  # the manifest alone: listing does not download bundles
                manifest: Mapping[str, Any] = read_remote_manifest(storage.join(str(models_root), version))[0]
            else:
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


def _upload(bundle: Bundle, models_root: str) -> str:
    """Upload a verified bundle to {models_root}/{version}/ in an object store: every file, then manifest.json last,
    so the version is published only once it is whole. An existing version must have the same manifest (and files
    of the listed sizes); it is kept, so a retried publish is safe."""
    version = bundle.model_version
    dest = storage.join(models_root, version)
    fs, path = storage.open_filesystem(dest)
    manifest_bytes = (Path(bundle.root) / MANIFEST).read_bytes()
    if fs.get_file_info(f"{path}/{MANIFEST}").type == pafs.FileType.File:
        remote, remote_bytes = read_remote_manifest(dest)
        problems = [] if remote_bytes == manifest_bytes else [f"{MANIFEST} differs from the bundle's"]
        listed = remote.get("files") or {}
        infos = fs.get_file_info([f"{path}/{name}" for name in sorted(listed)])
        problems += [
            f"{name}: {info.size} bytes, manifest says {listed[name].get('bytes')}"
            for name, info in zip(sorted(listed), infos)
            if info.type != pafs.FileType.File or info.size != listed[name].get("bytes", info.size)
        ]
        if problems:
            raise RegistryError(
                f"{dest!r} holds another or a damaged copy of model {version} ({'; '.join(problems)}); delete that prefix and publish again"
            )
        logger.info("model %s is already published at %s", version, dest)
        return dest
    for name in sorted(bundle.manifest["files"]):
        with open(Path(bundle.root) / name, "rb") as src, fs.open_output_stream(f"{path}/{name}") as out:
            copy_stream(src, out)
    storage.write_object(fs, f"{path}/{MANIFEST}", manifest_bytes)  # last: the version is published from here on
    logger.info("published model %s at %s", version, dest)
    return dest


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
    parser.add_argument(
        "--models-root",
        required=True,
        help="the models root: a folder of published bundles, or an object-store prefix (s3://bucket/models)",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="published versions, oldest first, with the current one marked")
    sub.add_parser("current", help="print the version CURRENT names")
    p = sub.add_parser("publish", help="copy a bundle in (verified) and make it current")
    p.add_argument("bundle", type=storage.local_path, help="a complete bundle folder (encoders, tokenizer, head)")
    p.add_argument("--no-current", action="store_true", help="publish without moving CURRENT")
    s = sub.add_parser("set-current", help="move CURRENT to a published version (a rollback, too)")
    s.add_argument("version")


def run(args: argparse.Namespace) -> int:
    """Run one registry action and print its result as JSON (current: the bare version)."""
    if args.action == "list":
        print(json.dumps(describe(args.models_root), indent=2))
    elif args.action == "current":
        resolve(args.models_root, CURRENT)  # fails unless CURRENT names a published version
        print(current_version(args.models_root))
    elif args.action == "publish":
        print(json.dumps(publish(args.bundle, args.models_root, make_current=not args.no_current), indent=2))
    else:
        previous = set_current(args.models_root, args.version)
        print(json.dumps({"current": args.version, "previous": previous}))
    return 0
