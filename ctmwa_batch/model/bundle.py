"""Verify a model bundle and print its manifest (the one place that knows the bundle layout).

A bundle is a folder (DESIGN.md section 5):

    manifest.json        format version, model version, labels, dims, encoder source, preprocessing,
                         graph signatures, opset, training metrics, created at, sha256 + size of every file
    image_encoder.onnx   pixels uint8 (N, S, S, 3) -> image_emb float32 (N, D), L2-normalised
    text_encoder.onnx    input_ids, attention_mask int64 (N, L) -> text_emb float32 (N, D), L2-normalised
    tokenizer.json       the text tokenizer, loadable by the `tokenizers` library alone
    head.onnx            the CTMWA head (text_emb, image_emb, has_text, has_image -> logits, probs, text_probs,
                         image_probs, text_weight, image_weight, text_evidence, image_evidence); joins with
                         `ctmwa-export head`, which also sets labels, dims.classes, head (precision, translators,
                         checkpoint, class bias, evidence), calibration, training_metrics
    end_to_end.onnx      optional (ctmwa-export head --end-to-end): pixels, input_ids, attention_mask, has_text,
                         has_image -> the head's outputs plus text_emb, image_emb; the three graphs above in one
    image_encoder.int8.onnx, text_encoder.int8.onnx   optional precision variants of the two encoders (same inputs
    image_encoder.fp16.onnx, text_encoder.fp16.onnx   and outputs); manifest "encoder_variants" lists each variant
                         present with its files' sha256 and its validation figures. No list: fp32 only (older bundles)

Encoders alone make a partial bundle that `embed` can use; `add_files` puts the head in and rewrites the manifest.
Loading verifies every checksum and rejects missing, changed and unexpected files, naming each.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctmwa_batch import schema
from ctmwa_batch.errors import BundleError
from ctmwa_batch.io import storage
from ctmwa_batch.model.preprocess import ImageSpec, TextSpec

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IMAGE_ENCODER = "image_encoder.onnx"
TEXT_ENCODER = "text_encoder.onnx"
HEAD = "head.onnx"
END_TO_END = "end_to_end.onnx"  # optional: the three graphs composed into one (for runtimes other than ctmwa-batch)
TOKENIZER = "tokenizer.json"
ENCODER_FILES = (IMAGE_ENCODER, TEXT_ENCODER, TOKENIZER)

# Precision variants of the encoders. fp32 is the graph pair above (what trained the head); the others are derived
# from it (fp16: float16 weights and activations, fp32 inputs/outputs; int8: dynamically quantized weights).
FP32, FP16, INT8 = "fp32", "fp16", "int8"
PRECISIONS = (FP32, FP16, INT8)
VARIANTS = "encoder_variants"  # manifest field: precision -> {"files": {graph: {file, sha256}}, "validation": {...}}


def encoder_files(precision: str) -> dict[str, str]:
    """Graph name ("image_encoder", "text_encoder") -> file name of one precision variant."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} unknown; use one of {list(PRECISIONS)}")
    suffix = "" if precision == FP32 else f".{precision}"
    return {Path(name).stem: f"{Path(name).stem}{suffix}.onnx" for name in (IMAGE_ENCODER, TEXT_ENCODER)}


# Graph input names of the encoders (their outputs are schema.IMAGE_EMB / schema.TEXT_EMB).
PIXELS = "pixels"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"

# The head graph's signature (DESIGN.md section 5), in graph order.
HEAD_INPUTS = (schema.TEXT_EMB, schema.IMAGE_EMB, schema.HAS_TEXT, schema.HAS_IMAGE)
LOGITS = "logits"
PROBS = "probs"
TEXT_PROBS = "text_probs"
IMAGE_PROBS = "image_probs"
TEXT_WEIGHT = "text_weight"
IMAGE_WEIGHT = "image_weight"
TEXT_EVIDENCE = "text_evidence"
IMAGE_EVIDENCE = "image_evidence"
# Heads exported before the evidence outputs existed lack the last two; they still score (evidence columns null).
CORE_HEAD_OUTPUTS = (LOGITS, PROBS, TEXT_PROBS, IMAGE_PROBS, TEXT_WEIGHT, IMAGE_WEIGHT)
EVIDENCE_OUTPUTS = (TEXT_EVIDENCE, IMAGE_EVIDENCE)
HEAD_OUTPUTS = (*CORE_HEAD_OUTPUTS, *EVIDENCE_OUTPUTS)

# Manifest fields that change what a bundle computes, besides its files: they enter the model version.
_VERSIONED_FIELDS = ("labels", "preprocessing")
_HASH_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# sha256 of files this process hashed, by (path, size, mtime_ns, inode): a backfill loads the same bundle for every
# day, and hashing ~1 GB of encoders each time would cost more than scoring a day from kept embeddings.
_HASHED: dict[tuple[str, int, int, int], str] = {}
# A file modified within this long before it was hashed is never taken from _HASHED: a second write in the same
# clock tick could keep its size and time (git's "racy clean" problem).
_RACY_NS = 2_000_000_000


def _verified_sha256(path: Path) -> str:
    """sha256_file, remembered for files unchanged (size, time, inode) since this process hashed them."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _HASHED:
        return _HASHED[key]
    hashed_at = time.time_ns()
    digest = sha256_file(path)
    if st.st_mtime_ns < hashed_at - _RACY_NS:
        _HASHED[key] = digest
    return digest


def model_version(manifest: Mapping[str, Any]) -> str:
    """16 hex digits derived from every file's sha256 plus the manifest fields that change the outputs."""
    payload = {
        "files": {name: entry["sha256"] for name, entry in sorted(manifest["files"].items())},
        **{key: manifest.get(key) for key in _VERSIONED_FIELDS},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Bundle:
    """A verified model bundle: its folder and its manifest."""

    root: Path  # the bundle folder
    manifest: Mapping[str, Any]  # manifest.json as read and verified

    @property
    def model_version(self) -> str:
        """Version string derived from the file hashes (goes into output paths and score rows)."""
        return self.manifest["model_version"]

    @property
    def files(self) -> dict[str, str]:
        """File name -> sha256 of every file in the bundle."""
        return {name: entry["sha256"] for name, entry in self.manifest["files"].items()}

    @property
    def labels(self) -> list[str] | None:
        """Class labels in output order; None until a head joins."""
        return self.manifest.get("labels")

    @property
    def dims(self) -> dict[str, int]:
        """Embedding (and, with a head, class) dimensions."""
        return dict(self.manifest.get("dims") or {})

    @property
    def training_metrics(self) -> dict[str, Any]:
        """The training run's summary metrics (empty for an encoders-only bundle)."""
        return dict(self.manifest.get("training_metrics") or {})

    @property
    def image_spec(self) -> ImageSpec:
        """How images are decoded for this bundle's image encoder."""
        return ImageSpec.from_dict(self.manifest["preprocessing"]["image"])

    @property
    def text_spec(self) -> TextSpec:
        """How texts are tokenized for this bundle's text encoder."""
        return TextSpec.from_dict(self.manifest["preprocessing"]["text"])

    @property
    def has_encoders(self) -> bool:
        """Whether the image and text encoders and the tokenizer are present."""
        return all(name in self.manifest["files"] for name in ENCODER_FILES)

    @property
    def precisions(self) -> tuple[str, ...]:
        """Encoder precision variants in the bundle, in PRECISIONS order; a bundle without the list has fp32 only."""
        variants = self.manifest.get(VARIANTS)
        if not variants:
            return (FP32,) if self.has_encoders else ()
        return tuple(p for p in PRECISIONS if p in variants)

    def encoder_paths(self, precision: str = FP32) -> tuple[Path, Path]:
        """(image encoder, text encoder) paths of one precision variant; BundleError naming the variants it has."""
        if precision not in self.precisions:
            raise BundleError(
                f"bundle {str(self.root)!r} has no {precision} encoders; it has {list(self.precisions)}: choose one of "
                f"those (--precision / CTMWA_PRECISION), or re-export the encoders with --precision {precision}"
            )
        files = encoder_files(precision)
        return self.path(files["image_encoder"]), self.path(files["text_encoder"])

    @property
    def encoder_side_files(self) -> tuple[str, ...]:
        """Every file of the encoders part: ENCODER_FILES plus each variant's graphs (what an encoders-only copy takes)."""
        extra = [name for p in self.precisions if p != FP32 for name in encoder_files(p).values()]
        return (*ENCODER_FILES, *extra)

    def variant(self, precision: str) -> dict[str, Any]:
        """The manifest entry of one variant (files with sha256, validation figures); {} for an old fp32-only bundle."""
        return dict((self.manifest.get(VARIANTS) or {}).get(precision) or {})

    @property
    def has_head(self) -> bool:
        """Whether the CTMWA head graph is present (a full, scoring-ready bundle)."""
        return HEAD in self.manifest["files"]

    def path(self, name: str) -> Path:
        """Path of one of the bundle's files; BundleError if the bundle has no such file."""
        if name not in self.manifest["files"]:
            hint = ""
            if name == HEAD:
                hint = "; this is an encoders-only bundle: add a head (ctmwa-export head) before scoring"
            elif name in ENCODER_FILES:
                hint = "; export the encoders into it (ctmwa-export encoders)"
            raise BundleError(
                f"bundle {str(self.root)!r} has no {name!r}; it has {sorted(self.manifest['files'])}{hint}"
            )
        return self.root / name

    def require(self, *names: str) -> None:
        """Fail with BundleError unless every named file is present."""
        for name in names:
            self.path(name)


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(
            f"bundle folder {str(root)!r} does not exist or is not a folder; pass --bundle DIR of an exported bundle"
        )
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise BundleError(
            f"bundle {str(root)!r} has no {MANIFEST}; it is not a model bundle (export one with ctmwa-export)"
        ) from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{MANIFEST} of bundle {str(root)!r} is unreadable: {e}; re-export the bundle") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{MANIFEST} of bundle {str(root)!r} has no 'files' table; re-export the bundle")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"{MANIFEST} of bundle {str(root)!r} has format_version {version!r}; this ctmwa-batch reads up to "
            f"{FORMAT_VERSION}: upgrade ctmwa-batch or re-export the bundle"
        )
    return manifest


def _files_on_disk(root: Path) -> set[str]:
    found = set()
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            found.add(Path(dirpath, filename).relative_to(root).as_posix())
    found.discard(MANIFEST)
    return found


def _variant_problems(manifest: Mapping[str, Any]) -> list[str]:
    """Each listed variant must name its files by the layout's names, and their sha256 must be the files table's."""
    problems = []
    for precision, entry in sorted((manifest.get(VARIANTS) or {}).items()):
        if precision not in PRECISIONS:
            problems.append(
                f"{MANIFEST}: encoder variant {precision!r} unknown (this ctmwa-batch knows {list(PRECISIONS)})"
            )
            continue
        for graph, name in encoder_files(precision).items():
            listed = ((entry or {}).get("files") or {}).get(graph) or {}
            if listed.get("file") != name or name not in manifest["files"]:
                problems.append(
                    f"{MANIFEST}: encoder variant {precision} lists {listed.get('file')!r} for {graph}, the bundle needs {name!r}"
                )
            elif listed.get("sha256") != manifest["files"][name]["sha256"]:
                problems.append(
                    f"{MANIFEST}: encoder variant {precision}: sha256 of {name} differs from the files table"
                )
    return problems


# --------------------------------------------------------------------------------------------------- the local cache

ENV_CACHE = "CTMWA_BUNDLE_CACHE"  # where bundles from an object store are cached (default ~/.cache/ctmwa-batch/bundles)
_CHUNK = 8 << 20


def copy_stream(src: Any, dst: Any) -> None:
    """Copy one stream into another in 8 MiB chunks (bundle files are hundreds of MB: never read whole)."""
    while chunk := src.read(_CHUNK):
        dst.write(chunk)


def read_remote_manifest(location: str) -> tuple[dict[str, Any], bytes]:
    """The manifest of the bundle at `location` in an object store, and its bytes; BundleError when absent."""
    fs, path = storage.open_filesystem(location)
    try:
        with fs.open_input_stream(f"{path}/{MANIFEST}") as f:
            data = f.read()
    except FileNotFoundError:
        raise BundleError(
            f"no model bundle at {location!r} (no {MANIFEST}); publish one there with `ctmwa-batch models publish`"
        ) from None
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{MANIFEST} at {location!r} is unreadable ({e}); publish the bundle again") from e
    if (
        not isinstance(manifest, dict)
        or not isinstance(manifest.get("files"), dict)
        or not manifest.get("model_version")
    ):
        raise BundleError(f"{MANIFEST} at {location!r} has no 'files' table or model_version; publish the bundle again")
    return manifest, data


def cache_root() -> Path:
    """Where bundles fetched from an object store are cached: CTMWA_BUNDLE_CACHE, else ~/.cache/ctmwa-batch/bundles."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ctmwa-batch" / "bundles"


def fetch_bundle(location: str, cache: str | Path | None = None) -> Path:
    """A local copy of the bundle at `location` (s3://.../models/VERSION): from the cache when it holds this version
    (keyed by model version and the manifest's sha256), else downloaded, verified (every checksum) and renamed into
    the cache. A bundle is immutable, so a cached copy was verified once and is reused as it is."""
    manifest, data = read_remote_manifest(location)
    version = str(manifest["model_version"])
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", version):
        raise BundleError(
            f"{MANIFEST} at {location!r} has model_version {version!r}, not a folder name; publish the bundle again"
        )
    root = Path(cache) if cache is not None else cache_root()
    dest = root / f"{version}-{hashlib.sha256(data).hexdigest()[:12]}"
    if (dest / MANIFEST).is_file():
        logger.debug("bundle %s from the cache %s", location, dest)
        return dest
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{version}-{uuid.uuid4().hex[:8]}"
    fs, path = storage.open_filesystem(location)
    try:
        for name in sorted(manifest["files"]):
            target = staging / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise BundleError(
                    f"{MANIFEST} at {location!r} lists {name!r}, outside the bundle; publish the bundle again"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with fs.open_input_stream(f"{path}/{name}") as src, open(target, "wb") as out:
                    copy_stream(src, out)
            except FileNotFoundError:
                raise BundleError(
                    f"bundle {location!r} lists {name!r} but the store has no such object; publish it again"
                ) from None
        (staging / MANIFEST).write_bytes(data)
        load_bundle(staging)  # every checksum, once: the cache only ever holds verified copies
        try:
            os.rename(staging, dest)
        except OSError:
            if not (dest / MANIFEST).is_file():
                raise
            logger.info("bundle %s was cached concurrently; keeping that copy", version)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("bundle %s copied from %s into the cache %s (verified)", version, location, dest)
    return dest


def load_bundle(root: str | Path, *, verify: bool = True) -> Bundle:
    """Read a bundle; with verify (the default) check every file's sha256 and fail naming each bad file.

    A location in an object store (s3://.../models/VERSION) is read from the local bundle cache
    (fetch_bundle): copied and verified once, then reused without hashing again."""
    if storage.is_object_store(str(root)):
        return load_bundle(fetch_bundle(str(root)), verify=False)
    root = Path(root)
    manifest = _read_manifest(root)
    if verify:
        problems = []
        listed = manifest["files"]
        for name, entry in sorted(listed.items()):
            path = root / name
            if not path.is_file():
                problems.append(f"{name}: listed in {MANIFEST} but missing")
                continue
            size = path.stat().st_size
            if size != entry.get("bytes", size):
                problems.append(f"{name}: changed ({size} bytes, manifest says {entry['bytes']})")
                continue
            digest = _verified_sha256(path)
            if digest != entry.get("sha256"):
                problems.append(
                    f"{name}: changed (sha256 {digest[:12]}..., manifest says {str(entry.get('sha256'))[:12]}...)"
                )
        for name in sorted(_files_on_disk(root) - set(listed)):
            problems.append(f"{name}: unexpected file, not listed in {MANIFEST}")
        problems += _variant_problems(manifest)
        if not problems and manifest.get("model_version") != model_version(manifest):
            problems.append(f"{MANIFEST}: model_version does not match its files and preprocessing (edited by hand?)")
        if problems:
            raise BundleError(
                f"bundle {str(root)!r} failed verification; re-export it or restore these files:\n  - "
                + "\n  - ".join(problems)
            )
    bundle = Bundle(root=root, manifest=manifest)
    try:
        if "preprocessing" in manifest:
            bundle.image_spec, bundle.text_spec  # noqa: B018 - parse now, fail at load rather than mid-job
    except (TypeError, ValueError, KeyError) as e:
        raise BundleError(
            f"{MANIFEST} of bundle {str(root)!r} has bad preprocessing settings: {e}; re-export the bundle"
        ) from e
    logger.debug("loaded bundle %s (model_version %s, files %s)", root, bundle.model_version, sorted(bundle.files))
    return bundle


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it private; a bundle is read by other users (workers)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finish_manifest(root: Path, manifest: dict[str, Any]) -> Bundle:
    """Hash every file in root, derive the model version, write manifest.json, return the verified bundle."""
    manifest["files"] = {
        name: {"sha256": sha256_file(root / name), "bytes": (root / name).stat().st_size}
        for name in sorted(_files_on_disk(root))
    }
    if manifest.get(VARIANTS):
        manifest[VARIANTS] = {
            precision: {
                **entry,
                "files": {
                    graph: {"file": name, "sha256": manifest["files"].get(name, {}).get("sha256")}
                    for graph, name in encoder_files(precision).items()
                },
            }
            for precision, entry in sorted(
                manifest[VARIANTS].items(), key=lambda kv: PRECISIONS.index(kv[0]) if kv[0] in PRECISIONS else 99
            )
        }
    manifest["model_version"] = model_version(manifest)
    _write_json_atomic(root / MANIFEST, manifest)
    logger.info(
        "wrote %s (model_version %s, %d files)", root / MANIFEST, manifest["model_version"], len(manifest["files"])
    )
    return load_bundle(root, verify=False)  # just hashed: a second pass over every file would find the same


def write_manifest(
    root: str | Path,
    *,
    image: ImageSpec,
    text: TextSpec,
    dims: Mapping[str, int],
    encoder: Mapping[str, Any],
    opset: int | None,
    graphs: Mapping[str, Any] | None = None,
    labels: list[str] | None = None,
    training_metrics: Mapping[str, Any] | None = None,
    created_at: str | None = None,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
) -> Bundle:
    """Write manifest.json for every file now in `root` (all of them are listed and hashed) and return the bundle.

    `variants`: precision -> {"validation": {...}} for each encoder variant written (file names and sha256 are
    filled in here); None writes no list, which readers take as fp32 only."""
    root = Path(root)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model_version": None,  # filled from the hashes below
        "created_at": created_at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "labels": list(labels) if labels is not None else None,
        "dims": dict(dims),
        "encoder": dict(encoder),
        "preprocessing": {"image": image.to_dict(), "text": text.to_dict(), "normalized_outputs": True},
        "opset": opset,
        "graphs": dict(graphs or {}),
        "training_metrics": dict(training_metrics or {}),
    }
    if variants:
        manifest[VARIANTS] = {precision: dict(entry) for precision, entry in variants.items()}
    return _finish_manifest(root, manifest)


def add_files(
    root: str | Path,
    files: Mapping[str, str | Path] | None = None,
    *,
    updates: Mapping[str, Any] | None = None,
    replace: bool = False,
) -> Bundle:
    """Copy files into a verified bundle (e.g. {"head.onnx": path}), merge top-level manifest updates, re-hash.

    `updates` merges dict-valued fields one level deep (e.g. {"dims": {"classes": 3}, "graphs": {...}}) and
    replaces the others (e.g. "labels", "training_metrics"). The model version changes with the new files.
    """
    root = Path(root)
    bundle = load_bundle(root)
    manifest = dict(bundle.manifest)
    files = dict(files or {})
    # Check everything before touching the folder, so a refused update leaves the bundle as it was.
    for name, src in files.items():
        if Path(name).is_absolute() or ".." in Path(name).parts or name == MANIFEST:
            raise BundleError(f"cannot add {name!r} to a bundle: give a plain file name such as {HEAD!r}")
        if name in manifest["files"] and not replace:
            raise BundleError(f"bundle {str(root)!r} already has {name!r}; pass replace=True to overwrite it")
        if not Path(src).is_file():
            raise BundleError(f"cannot add {name!r} to bundle {str(root)!r}: source {str(src)!r} is not a file")
    for key in updates or {}:
        if key in ("files", "model_version", "format_version"):
            raise BundleError(f"manifest field {key!r} is derived, not set; drop it from the updates")
    for key, value in (updates or {}).items():
        if isinstance(value, Mapping) and isinstance(manifest.get(key), Mapping):
            manifest[key] = {**manifest[key], **value}
        else:
            manifest[key] = value
    for name, src in files.items():
        dest = root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    return _finish_manifest(root, manifest)


def add_head(
    root: str | Path,
    files: Mapping[str, str | Path],
    *,
    labels: list[str],
    num_classes: int,
    graphs: Mapping[str, Any],
    head: Mapping[str, Any],
    calibration: Mapping[str, Any],
    training_metrics: Mapping[str, Any],
    variants: Mapping[str, Mapping[str, Any]] | None = None,
) -> Bundle:
    """Join a head (head.onnx, optionally end_to_end.onnx) to an encoders bundle: the files plus the manifest fields
    a head sets (labels, dims.classes, graph signatures, head info, calibration, training metrics, and `variants`:
    the encoder variants' entries with the head's agreement figures)."""
    return add_files(
        root,
        files,
        updates={
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "labels": list(labels),
            "dims": {"classes": num_classes},
            "graphs": dict(graphs),
            "head": dict(head),
            "calibration": dict(calibration),
            "training_metrics": dict(training_metrics),
            **({VARIANTS: dict(variants)} if variants else {}),
        },
    )


def write_encoders_only(source: Bundle, out_dir: str | Path) -> Bundle:
    """An encoders-only bundle at out_dir (a new folder) with the encoders, tokenizer and preprocessing of `source`.

    Its model version equals that of the encoders bundle `source` was made from, so features made with it stay valid."""
    source.require(*ENCODER_FILES)
    out = Path(out_dir)
    out.mkdir(parents=True)
    for name in source.encoder_side_files:  # every precision variant too
        shutil.copyfile(source.path(name), out / name)
    manifest = source.manifest
    # the variants as the encoders bundle listed them (the head's agreement figures belong to the head's bundle)
    variants = (
        {
            p: {"validation": {g: f for g, f in (source.variant(p).get("validation") or {}).items() if g != "head"}}
            for p in source.precisions
        }
        if manifest.get(VARIANTS)
        else None
    )
    return write_manifest(
        out,
        image=source.image_spec,
        text=source.text_spec,
        dims={schema.TEXT_EMB: source.dims[schema.TEXT_EMB], schema.IMAGE_EMB: source.dims[schema.IMAGE_EMB]},
        encoder=manifest.get("encoder") or {},
        opset=manifest.get("opset"),
        graphs={k: v for k, v in (manifest.get("graphs") or {}).items() if k in ENCODER_FILES},
        variants=variants,
    )


# --------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`ctmwa-batch inspect` arguments."""
    parser.add_argument(
        "bundle_path", nargs="?", metavar="BUNDLE", help="model bundle folder, or s3://.../models/VERSION"
    )
    parser.add_argument("--bundle", help="model bundle folder (same as the positional BUNDLE)")
    parser.add_argument("--no-verify", action="store_true", help="skip the checksum verification")
    parser.add_argument(
        "--format",
        choices=["json", "text"],
        default="json",
        help="json (default): the manifest; text: a summary to read",
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _variant_summary(entry: Mapping[str, Any]) -> str:
    """One line of a variant's files and validation figures."""
    files = entry.get("files") or {}
    parts = (
        [" + ".join(f"{v['file']} ({str(v.get('sha256'))[:12]})" for v in files.values())]
        if files
        else ["image_encoder.onnx + text_encoder.onnx"]
    )
    for graph, figures in sorted((entry.get("validation") or {}).items()):
        if not isinstance(figures, Mapping):
            continue
        shown = ", ".join(
            f"{k} {v:.6f}" if k == "min_cosine" and isinstance(v, float) else f"{k} {_fmt(v)}"
            for k, v in figures.items()
            if k in ("min_cosine", "max_abs_diff", "argmax_agreement", "rows")
        )
        parts.append(f"{graph}: {shown}")
    return "; ".join(parts)


def describe(bundle: Bundle) -> list[str]:
    """A readable summary of a bundle: version, files, labels, dims, preprocessing, head, calibration, metrics."""
    m = bundle.manifest
    lines = [
        f"bundle        {bundle.root}",
        f"model_version {bundle.model_version} (format {m.get('format_version')}, opset {m.get('opset')}, created {m.get('created_at')})",
        f"kind          {'full (scoring-ready)' if bundle.has_head else 'encoders only (embed; add a head with ctmwa-export head)'}",
        "files",
        *(
            f"  {name:<20} {entry['bytes']:>12,} bytes  sha256 {entry['sha256'][:12]}"
            for name, entry in sorted(m["files"].items())
        ),
        f"dims          {bundle.dims}",
    ]
    encoder = m.get("encoder") or {}
    if encoder:
        lines.append(
            f"encoder       {encoder.get('source')} ({encoder.get('architecture')}, text pooling {encoder.get('text_pooling')})"
        )
    if "preprocessing" in m:
        image, text = bundle.image_spec, bundle.text_spec
        lines.append(
            f"preprocess    image {image.size}px ({image.interpolation}, mean {list(image.mean)}, std {list(image.std)}); "
            f"text max {text.max_length} tokens"
        )
    if bundle.has_encoders:
        lines.append(
            f"precisions    {', '.join(bundle.precisions)}"
            + ("" if m.get(VARIANTS) else " (no variant list: an fp32-only bundle)")
        )
        for precision in bundle.precisions:
            lines.append(f"  {precision:<5} {_variant_summary(bundle.variant(precision))}")
    if bundle.has_head:
        lines.extend(_describe_head(bundle))
    return lines


def _describe_head(bundle: Bundle) -> list[str]:
    """The head's part of `describe`: labels, class bias, probe blend, evidence, calibration, training metrics."""
    m = bundle.manifest
    lines: list[str] = []
    head = m.get("head") or {}
    lines.append(f"labels        {bundle.labels}")
    lines.append(f"head          {head.get('precision', '?')}, translators {head.get('translators', '?')}")
    bias = head.get("class_bias") or {}
    if bias.get("method", "none") == "none":
        lines.append("class bias    none (argmax of the classifier's logits)")
    else:
        lines.append(
            f"class bias    {[round(float(b), 3) for b in bias.get('bias', [])]} added to the logits ({bias['method']}: "
            f"valid weighted F1 {_fmt(bias.get('valid_f1_weighted_before'))} -> {_fmt(bias.get('valid_f1_weighted_after'))})"
        )
    blend = head.get("probe_blend") or {}
    if float(blend.get("weight") or 0.0) == 0.0:
        lines.append("probe blend   off (the paper's classifier alone)")
    else:
        lines.append(
            f"probe blend   logits_m + {blend['weight']:g} * log_softmax(linear probe) (valid weighted F1 "
            f"{_fmt(blend.get('valid_f1_weighted_before'))} -> {_fmt(blend.get('valid_f1_weighted_after'))})"
        )
    evidence = head.get("evidence")
    lines.append(
        f"evidence      {evidence['method']}"
        if evidence
        else "evidence      none: text_evidence/image_evidence score null (head exported before they existed; re-export it)"
    )
    lines.append("weights       text_weight/image_weight: the paper's meta-learned loss weights, not an attribution")
    calibration = m.get("calibration") or {}
    if calibration.get("method", "none") == "none":
        lines.append("calibration   none (probs = softmax(logits))")
    else:
        lines.append(
            f"calibration   {calibration['method']} T = {_fmt(calibration.get('temperature'))} on {calibration.get('rows')} "
            f"{calibration.get('split')} rows; ECE {_fmt(calibration.get('ece_before'))} -> {_fmt(calibration.get('ece_after'))}"
        )
    metrics = m.get("training_metrics") or {}
    if metrics:
        keys = (
            "valid_accuracy",
            "test_accuracy",
            "test_f1_weighted",
            "missing_text_test_accuracy",
            "missing_image_test_accuracy",
            "test_text_evidence_auc",
            "test_image_evidence_auc",
        )
        lines.append("metrics       " + ", ".join(f"{k} {_fmt(metrics.get(k))}" for k in keys if k in metrics))
    return lines


def run(args: argparse.Namespace) -> int:
    """Verify the bundle and print its manifest (files as name: sha256 prefix) or a readable summary."""
    root = args.bundle_path or args.bundle
    if root is None or (args.bundle_path and args.bundle and args.bundle_path != args.bundle):
        raise BundleError("give the bundle folder once: ctmwa-batch inspect BUNDLE (or --bundle BUNDLE)")
    bundle = load_bundle(root, verify=not args.no_verify)
    if args.format == "text":
        print(
            "\n".join(
                [
                    *describe(bundle),
                    f"verified      {'yes: every sha256 matches' if not args.no_verify else 'no (--no-verify)'}",
                ]
            )
        )
        return 0
    summary = {key: value for key, value in bundle.manifest.items() if key != "files"}
    summary["files"] = {
        name: f"{entry['sha256'][:12]} ({entry['bytes']} bytes)" for name, entry in bundle.manifest["files"].items()
    }
    summary["has_head"] = bundle.has_head
    summary["verified"] = not args.no_verify
    print(json.dumps(summary, indent=2))
    return 0
