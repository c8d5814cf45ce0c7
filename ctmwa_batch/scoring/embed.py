"""Embed posts: text and image embeddings from a bundle's ONNX encoders, streamed Parquet to Parquet.

`ctmwa-batch embed --bundle DIR --input PARQUET_OR_DIR --output PATH` streams the posts through the shared pipeline
(ctmwa_batch.scoring.pipeline: decoding overlaps encoding), decodes images and tokenizes texts the one way
(ctmwa_batch.model.preprocess), runs the encoders, and writes every input row
once with `text_emb`, `image_emb` (list<float32>, null where missing), `has_text`, `has_image`, `image_error`
and the other input columns passed through (the image bytes are dropped unless --keep-image-column). The output
appears atomically (written under a temporary name, then renamed). Training features and scoring share this path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import posixpath
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ctmwa_batch import imagepolicy, schema
from ctmwa_batch.config import DEFAULT_BATCH_SIZE, DEFAULT_DEVICE, DEFAULT_QUEUE_BATCHES, DEVICES, check_device
from ctmwa_batch.errors import InputSchemaError
from ctmwa_batch.imagepolicy import DEFAULT_MAX_IMAGE_BYTES
from ctmwa_batch.io import storage
from ctmwa_batch.io.fetch import FetchConfig, Fetcher, local_input_root
from ctmwa_batch.model.bundle import (
    ATTENTION_MASK,
    IMAGE_ENCODER,
    INPUT_IDS,
    PIXELS,
    TEXT_ENCODER,
    TOKENIZER,
    Bundle,
    load_bundle,
)
from ctmwa_batch.model.posts import ImageDecoder, check_posts_schema, image_errors, image_items
from ctmwa_batch.model.precision import AUTO, CHOICES, check_choice, resolve_for_bundle
from ctmwa_batch.model.preprocess import ImageSpec, TextTokenizer, TokenizedTexts
from ctmwa_batch.model.runtime import RuntimeConfig, create_session, expects_cuda
from ctmwa_batch.progress import Progress
from ctmwa_batch.scoring import pipeline

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class EmbedConfig:
    """What `ctmwa-batch embed` does."""

    bundle_dir: (
        str | Path
    )  # model bundle with image_encoder.onnx, text_encoder.onnx, tokenizer.json (a head is not needed)
    input_path: str | Path  # a posts Parquet file or a folder of them (hive partitions become columns)
    output_path: str | Path  # the features Parquet file to write (replaced atomically if it exists)
    id_column: str | None = schema.DEFAULT_ID_COLUMN  # must exist when set; passed through like other columns
    text_column: str | None = schema.DEFAULT_TEXT_COLUMN  # string column; None = posts have no text
    image_column: str | None = schema.DEFAULT_IMAGE_COLUMN  # bytes, or a path/URI string; None = no images
    batch_size: int = DEFAULT_BATCH_SIZE  # rows per record batch read, decoded, encoded and written
    device: str = DEFAULT_DEVICE  # auto | cpu | cuda (cuda unavailable -> ProviderUnavailable)
    workers: int = 0  # image-decoding processes; 0 decodes in the pipeline's reader thread (still overlapping encoding)
    intra_op_threads: int = 0  # ONNX Runtime threads per session; 0 = all cores
    keep_image_column: bool = False  # pass the image bytes through to the output too (large)
    precision: str = "fp32"  # encoder variant; fp32 by default: training features must be what the head is validated on
    # ---- untrusted image references (ctmwa_batch.imagepolicy, docs/untrusted-images.md)
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES  # an image above it is missing ("image too large"), never read whole
    # host names, host:port, addresses or CIDRs http(s) images may reach inside the refused ranges
    allow_image_hosts: tuple[str, ...] = ()
    image_roots: tuple[str, ...] = ()  # folders local image paths may be read from, besides a local input's own folder

    def __post_init__(self) -> None:
        check_choice(self.precision)
        if self.batch_size < 1:
            raise ValueError(f"batch_size {self.batch_size}: must be at least 1")
        check_device(self.device)
        if self.workers < 0:
            raise ValueError(f"workers {self.workers}: must be 0 (in process) or more")
        # checked as the fetcher checks them (ValueError naming a bad value)
        FetchConfig(
            max_image_bytes=self.max_image_bytes,
            allow_image_hosts=self.allow_image_hosts,
            image_roots=self.image_roots,
        )


@dataclass(frozen=True)
class EncodedTexts:
    """Text embeddings of a batch: zeros where the text is missing."""

    emb: np.ndarray  # float32 (N, D), L2-normalised where ok
    ok: np.ndarray  # bool (N,)
    reasons: list[str | None]  # why a text is missing (null, empty, whitespace only)


class Encoders:
    """A bundle's two encoders (one precision variant, see ctmwa_batch.model.precision) plus its tokenizer:
    texts / uint8 pixels -> L2-normalised embeddings."""

    def __init__(self, bundle: Bundle, runtime: RuntimeConfig = RuntimeConfig(), precision: str = "fp32"):
        bundle.require(IMAGE_ENCODER, TEXT_ENCODER, TOKENIZER)
        self.bundle = bundle
        self.image_spec: ImageSpec = bundle.image_spec
        self.tokenizer = TextTokenizer(bundle.path(TOKENIZER), bundle.text_spec)
        self.precision = resolve_for_bundle(precision, bundle, on_gpu=expects_cuda(runtime.device))
        image_path, text_path = bundle.encoder_paths(self.precision)
        self.image_session = create_session(image_path, runtime)
        if (
            precision == AUTO
            and not self.image_session.on_gpu
            and self.precision != resolve_for_bundle(AUTO, bundle, on_gpu=False)
        ):
            # device auto expected CUDA but the session fell back to the CPU: take the CPU's variant instead
            self.precision = resolve_for_bundle(AUTO, bundle, on_gpu=False)
            image_path, text_path = bundle.encoder_paths(self.precision)
            self.image_session = create_session(image_path, runtime)
        self.text_session = create_session(text_path, runtime)
        self.text_dim = int(bundle.dims[schema.TEXT_EMB])
        self.image_dim = int(bundle.dims[schema.IMAGE_EMB])

    @property
    def provider(self) -> str:
        """Execution provider the sessions run on."""
        return self.image_session.provider

    def encode_texts(self, texts: Sequence[str | None]) -> EncodedTexts:
        """Tokenize and encode; only the present texts go through the graph."""
        return self.encode_tokens(self.tokenizer.encode(texts))

    def encode_tokens(self, tokens: TokenizedTexts) -> EncodedTexts:
        """Encode tokenized texts (from `self.tokenizer`); only the present texts go through the graph."""
        n = len(tokens.ok)
        emb = np.zeros((n, self.text_dim), dtype=np.float32)
        if tokens.ok.any():
            # Trim the padding to the longest present row (the dummy rows of missing texts are dropped).
            ids, mask = tokens.input_ids[tokens.ok], tokens.attention_mask[tokens.ok]
            length = int(mask.sum(axis=1).max())
            emb[tokens.ok] = self.text_session.run({INPUT_IDS: ids[:, :length], ATTENTION_MASK: mask[:, :length]})[
                schema.TEXT_EMB
            ]
        return EncodedTexts(emb=emb, ok=tokens.ok, reasons=tokens.reasons)

    def encode_pixels(self, pixels: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> float32 (N, D); rows that are not ok stay zero and are not computed."""
        emb = np.zeros((len(pixels), self.image_dim), dtype=np.float32)
        if ok.any():
            # int8 scales activations per run, so its embeddings move (~1e-3) with what shares the batch; fp32 / fp16 do not
            emb[ok] = self.image_session.run({PIXELS: np.ascontiguousarray(pixels[ok])})[schema.IMAGE_EMB]
        return emb


# --------------------------------------------------------------------------------------------------- input


def _open_input(location: str) -> tuple[ds.Dataset, Path]:
    """The posts as a dataset (a local path or a URI) and the folder relative image paths are relative to."""
    fs, path = storage.open_filesystem(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputSchemaError(
            f"input {location!r} does not exist; pass --input a posts Parquet file or a folder of them"
        )
    try:
        dataset = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    except pa.ArrowInvalid as e:
        raise InputSchemaError(
            f"input {location!r} is not readable as Parquet: {e}; pass --input a posts Parquet file or folder"
        ) from e
    if not isinstance(fs, pafs.LocalFileSystem):
        return dataset, Path.cwd()
    return dataset, Path(path) if info.type == pafs.FileType.Directory else Path(path).parent


# --------------------------------------------------------------------------------------------------- output


def embedding_array(emb: np.ndarray, ok: np.ndarray, type: pa.ListType = schema.EMBEDDING_TYPE) -> pa.ListArray:
    """(N, D) + ok (N,) -> a list array of `type` (list<float32> for features, list<halffloat> for kept embeddings)
    with nulls where not ok (no values stored for those rows)."""
    n, d = emb.shape
    ok = np.asarray(ok, dtype=bool)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.where(ok, d, 0), out=offsets[1:])
    value_type = type.value_type
    dtype = np.float16 if pa.types.is_float16(value_type) else np.float32
    values = pa.array(np.ascontiguousarray(emb[ok], dtype=dtype).reshape(-1), type=value_type)
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=type, mask=pa.array(~ok))


def _output_schema(
    posts_schema: pa.Schema, config: EmbedConfig, metadata: dict[str, str]
) -> tuple[pa.Schema, list[str]]:
    added = {f.name for f in schema.EMBED_FIELDS}
    passthrough = [
        f for f in posts_schema if f.name not in added and (config.keep_image_column or f.name != config.image_column)
    ]
    replaced = sorted(added & set(posts_schema.names))
    if replaced:
        logger.warning("input already has %s; they are recomputed and replaced", replaced)
    return pa.schema([*passthrough, *schema.EMBED_FIELDS], metadata=metadata), [f.name for f in passthrough]


# --------------------------------------------------------------------------------------------------- the job


@dataclass
class _EmbedPrepared:
    """A batch after the reader thread's work: the input columns, the tokens, the image bytes to decode."""

    batch: pa.RecordBatch
    tokens: TokenizedTexts
    images: list[bytes | None]
    read_errors: list[str | None]
    locations: list[str | None] | None  # image URIs/paths the pipeline's fetch stage turns into `images`


@dataclass
class _EmbedCounts:
    """Rows with text / image / neither, and image errors by reason, counted in the writer thread."""

    has_text: int = 0
    has_image: int = 0
    no_content: int = 0
    reasons: Counter = field(default_factory=Counter)

    def add(self, batch: pa.RecordBatch) -> None:
        text = batch.column(schema.HAS_TEXT).to_numpy(zero_copy_only=False)
        image = batch.column(schema.HAS_IMAGE).to_numpy(zero_copy_only=False)
        self.has_text += int(text.sum())
        self.has_image += int(image.sum())
        self.no_content += int((~text & ~image).sum())
        self.reasons.update(e.split(":")[0] for e in batch.column(schema.IMAGE_ERROR).to_pylist() if e)


def _steps(
    encoders: Encoders, config: EmbedConfig, image_paths: bool, out_schema: pa.Schema, passthrough: list[str]
) -> pipeline.Steps:
    """Embed's two pipeline steps: tokenize in the reader thread; encode and assemble the output in the main thread."""

    def prepare(batch: pa.RecordBatch, base: Path) -> _EmbedPrepared:
        texts = batch.column(config.text_column).to_pylist() if config.text_column else [None] * batch.num_rows
        images, locations = image_items(batch, config.image_column, image_paths)
        return _EmbedPrepared(batch, encoders.tokenizer.encode(texts), images, [None] * batch.num_rows, locations)

    def infer(prepared: _EmbedPrepared, decoded: pipeline.Decoded) -> pa.RecordBatch:
        pixels, image_ok, image_reasons = decoded
        text = encoders.encode_tokens(prepared.tokens)
        image_emb = encoders.encode_pixels(pixels, image_ok)
        columns = [prepared.batch.column(name) for name in passthrough]
        columns += [
            embedding_array(text.emb, text.ok),
            embedding_array(image_emb, image_ok),
            pa.array(text.ok, type=pa.bool_()),
            pa.array(image_ok, type=pa.bool_()),
            pa.array(image_errors(image_ok, image_reasons, prepared.read_errors), type=pa.string()),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=out_schema)

    return pipeline.Steps(prepare=prepare, infer=infer)


def embed(config: EmbedConfig) -> dict[str, Any]:
    """Run the embed job on the shared pipeline (decoding overlaps encoding); returns stats (rows, rows with text /
    image, image errors by reason, seconds, rows/s, seconds per stage)."""
    t0 = time.perf_counter()
    dataset, base = _open_input(str(config.input_path))
    image_paths = check_posts_schema(dataset.schema, config, f"input {str(config.input_path)!r}")
    bundle = load_bundle(config.bundle_dir)
    encoders = Encoders(
        bundle, RuntimeConfig(device=config.device, intra_op_threads=config.intra_op_threads), config.precision
    )
    source = {
        "model_version": bundle.model_version,
        "encoder": bundle.manifest.get("encoder", {}).get("source"),
        "bundle": str(config.bundle_dir),
        "precision": encoders.precision,
    }
    out_schema, passthrough = _output_schema(dataset.schema, config, {"ctmwa_batch.scoring.embed": json.dumps(source)})
    output = str(config.output_path)
    out_fs, out_path = storage.open_filesystem(output)
    out_fs.create_dir(posixpath.dirname(out_path), recursive=True)
    # Written under a hidden name beside the output and moved over it: a reader never sees half a file.
    tmp = f"{posixpath.dirname(out_path)}/.{posixpath.basename(out_path)}.tmp-{uuid.uuid4().hex}"
    counts = _EmbedCounts()
    # Bounded readahead: at most a few batches of image bytes are in memory at once.
    batches = (
        (b, base) for b in dataset.to_batches(batch_size=config.batch_size, batch_readahead=2, fragment_readahead=1)
    )
    try:
        fetcher = Fetcher(
            FetchConfig(
                max_image_bytes=config.max_image_bytes,
                allow_image_hosts=config.allow_image_hosts,
                image_roots=(*config.image_roots, *filter(None, [local_input_root(config.input_path)])),
            )
        )
        with (
            fetcher,
            ImageDecoder(encoders.image_spec, config.workers) as decoder,
            out_fs.open_output_stream(tmp) as sink,
        ):
            with pq.ParquetWriter(sink, out_schema) as writer:
                stats = pipeline.run(
                    batches,
                    _steps(encoders, config, image_paths, out_schema, passthrough),
                    decoder,
                    pipeline.ParquetSink(writer, out_schema, tally=counts.add),
                    queue_batches=DEFAULT_QUEUE_BATCHES,
                    name="embed",
                    progress=Progress(dataset.count_rows(), PROGRESS_EVERY_S, label="embedded"),
                    fetcher=fetcher,
                )
        storage.move(out_fs, tmp, out_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            out_fs.delete_file(tmp)
    seconds = time.perf_counter() - t0
    result = {
        "rows": stats.rows,
        "has_text": counts.has_text,
        "has_image": counts.has_image,
        "no_content": counts.no_content,
        "image_errors": sum(counts.reasons.values()),
        "image_error_reasons": dict(counts.reasons.most_common(10)),
        "seconds": round(seconds, 3),
        "rows_per_s": round(stats.rows / seconds, 1) if seconds > 0 else None,
        "timings": {k: round(v, 3) for k, v in stats.seconds.as_dict().items()},
        "decode_workers": config.workers,
        "provider": encoders.provider,
        "precision": encoders.precision,
        "model_version": bundle.model_version,
        "output": output,
    }
    logger.info("embed done: %s", json.dumps(result))
    return result


def embed_posts(
    bundle_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    *,
    id_column: str | None = schema.DEFAULT_ID_COLUMN,
    text_column: str | None = schema.DEFAULT_TEXT_COLUMN,
    image_column: str | None = schema.DEFAULT_IMAGE_COLUMN,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = DEFAULT_DEVICE,
    workers: int = 0,
    keep_image_column: bool = False,
    precision: str = "fp32",
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    allow_image_hosts: tuple[str, ...] = (),
    image_roots: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Library entry point of `ctmwa-batch embed`: posts Parquet -> features Parquet; returns the stats."""
    return embed(
        EmbedConfig(
            bundle_dir=bundle_dir,
            input_path=input_path,
            output_path=output_path,
            id_column=id_column,
            text_column=text_column,
            image_column=image_column,
            batch_size=batch_size,
            device=device,
            workers=workers,
            keep_image_column=keep_image_column,
            precision=precision,
            max_image_bytes=max_image_bytes,
            allow_image_hosts=allow_image_hosts,
            image_roots=image_roots,
        )
    )


# --------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`ctmwa-batch embed` arguments."""
    d = EmbedConfig(Path("."), Path("."), Path("."))
    parser.add_argument(
        "--bundle", required=True, help="model bundle folder (encoders needed, head not), or s3://.../models/VERSION"
    )
    parser.add_argument("--input", required=True, help="posts Parquet file or folder, a path or a URI (s3://...)")
    parser.add_argument("--output", required=True, help="features Parquet file to write, a path or a URI (s3://...)")
    parser.add_argument("--id-column", default=d.id_column, help=f"id column (default {d.id_column!r})")
    parser.add_argument("--text-column", default=d.text_column, help=f"text column (default {d.text_column!r})")
    parser.add_argument(
        "--image-column", default=d.image_column, help=f"image bytes or path column (default {d.image_column!r})"
    )
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"rows per batch (default {d.batch_size})")
    parser.add_argument(
        "--device", choices=DEVICES, default=d.device, help=f"{' | '.join(DEVICES)} (default {d.device})"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help="image-decoding processes (default 0: the reader thread, still overlapping encoding)",
    )
    parser.add_argument(
        "--threads", type=int, default=d.intra_op_threads, help="ONNX Runtime threads (default 0: all cores)"
    )
    parser.add_argument("--keep-image-column", action="store_true", help="pass the image column through as well")
    parser.add_argument(
        "--precision",
        choices=CHOICES,
        default=d.precision,
        help="encoder variant (default fp32: training features; auto: int8 on CPU, fp16 on CUDA where the bundle has them)",
    )
    # ---- untrusted image references: --max-image-bytes, --allow-image-host, --image-root (docs/untrusted-images.md)
    imagepolicy.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Build the config from the arguments and embed."""
    config = EmbedConfig(
        bundle_dir=args.bundle,
        input_path=args.input,
        output_path=args.output,
        id_column=args.id_column or None,
        text_column=args.text_column,
        image_column=args.image_column,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        intra_op_threads=args.threads,
        keep_image_column=args.keep_image_column,
        precision=args.precision,
        **imagepolicy.from_args(args),
    )
    stats = embed(config)
    print(json.dumps(stats, indent=2))
    return 0
