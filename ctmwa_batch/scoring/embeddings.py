"""Kept embeddings: backfills at the cost of the head, and each distinct image encoded once per run.

Three things live here, behind a small interface so a table form (Iceberg, Delta) can sit beside the Parquet one:

- **What is kept** (`schema.kept_embeddings_schema`, `kept_columns`): per input row, the id, its position `row` in the partition
  (listing order: duplicate ids stay two rows), `has_text`, `has_image`, `image_error` (why a present image was
  unusable, exactly as the scores say it) and the encoders' outputs `text_emb`, `image_emb` as float16 (null where
  the modality is missing). The same shard writes them as it writes its scores (partitions.part_writer) and the same
  commit publishes them (`_embeddings/` inside the scores partition, listed in `_SUCCESS.json` by `record`).
- **Whether a later run may use them** (`identity`, `find`, `check_source`): kept embeddings are bound to the
  encoders that made them (the sha256 of the encoder files of the precision actually used, the tokenizer, and the
  preprocessing) and to the posts partition they were computed from (the plan's listing sha256 plus each file's
  modification time). A run whose bundle has the same encoders and whose posts are unchanged scores from them with
  the head alone; anything else runs the encoders, and the log says why.
- **Distinct images** (`ImageCache`): identical image bytes (a hash of the bytes already in memory) are decoded and
  encoded once per scoring session; later rows reuse the embedding, the status and the error of the first.

float16 keeps 11 significant bits: each kept component is within 2^-11 (relative) of the encoder's float32 output, so a
kept L2-normalised embedding moves by at most 2^-11 in L2 norm. See docs/backfill.md for what that means for the
probabilities (`probability_tolerance`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ctmwa_batch import schema
from ctmwa_batch.errors import CtmwaError
from ctmwa_batch.io import storage
from ctmwa_batch.io.partitions import EMBEDDINGS_DIR, InputFile, PartitionPlan, read_success
from ctmwa_batch.model.bundle import FP32, TOKENIZER, Bundle, encoder_files
from ctmwa_batch.model.runtime import CPU
from ctmwa_batch.scoring.embed import embedding_array

logger = logging.getLogger(__name__)

FORMAT = "parquet"  # the form this module writes and reads; a table form would record "iceberg" / "delta"
DTYPE = "float16"
# Columns the scorer adds to a scores batch for the sink to split off (names no input column has).
KEPT_TEXT, KEPT_IMAGE, KEPT_ERROR = "__kept_text_emb", "__kept_image_emb", "__kept_image_error"
KEPT_COLUMNS = (KEPT_TEXT, KEPT_IMAGE, KEPT_ERROR)
# float16's unit roundoff: a stored component is within this (relative) of its float32 value.
FLOAT16_UNIT_ROUNDOFF = 2.0**-11
DEFAULT_IMAGE_CACHE_ENTRIES = 32_768  # distinct images whose embeddings a scoring session remembers (64 MiB at 512-d)


class EmbeddingsMismatch(CtmwaError):
    """Kept embeddings do not line up with the posts they claim to come from (or vanished after planning)."""


# --------------------------------------------------------------------------------------------------- identity


def identity(bundle: Bundle, precision: str) -> dict[str, Any]:
    """The encoders' identity: the sha256 of the encoder files of `precision` (resolved: fp32 | fp16 | int8), of the
    tokenizer, and the preprocessing; `digest` sums them up. Equal digests mean equal embeddings for equal posts."""
    files = bundle.files
    names = sorted([*encoder_files(precision).values(), TOKENIZER])
    payload = {
        "precision": precision,
        "files": {name: files[name] for name in names},
        "preprocessing": bundle.manifest.get("preprocessing"),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return {"digest": digest, "precision": precision, "files": payload["files"]}


def input_mtimes(input_path: str, files: Sequence[InputFile]) -> dict[str, int]:
    """Each posts file's modification time (ns): a rewrite of the same size and row count changes it."""
    fs, _ = storage.open_filesystem(input_path)
    infos = fs.get_file_info([f.path for f in files])
    return {i.path: int(i.mtime_ns or 0) for i in infos}


def keep_spec(bundle_identity: dict[str, Any], mtimes: dict[str, int]) -> dict[str, Any]:
    """What a plan that keeps embeddings records (PartitionPlan.keep_embeddings)."""
    return {"digest": bundle_identity["digest"], "encoders": bundle_identity, "input_mtimes": mtimes}


# --------------------------------------------------------------------------------------------------- what is kept


def float32_matrix(column: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """list<halffloat> -> float32 (N, D); null rows read as zeros (the head never sees them: their mask is off).
    EmbeddingsMismatch when a present row is not `dim` long."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    flat = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    if flat.size != int(valid.sum()) * dim:
        raise EmbeddingsMismatch(
            f"kept embeddings are not {dim}-d as this bundle's encoders are; rescore from the posts"
        )
    out = np.zeros((n, dim), dtype=np.float32)
    out[valid] = flat.reshape(-1, dim)
    return out


def kept_columns(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    text_ok: np.ndarray,
    image_ok: np.ndarray,
    image_error: list[str | None],
) -> list[pa.Array]:
    """The columns a scores batch carries to the sink when the plan keeps embeddings (KEPT_COLUMNS order)."""
    return [
        embedding_array(text_emb, text_ok, schema.KEPT_EMBEDDING_TYPE),
        embedding_array(image_emb, image_ok, schema.KEPT_EMBEDDING_TYPE),
        pa.array(image_error, pa.string()),
    ]


class KeepingSink:
    """A shard's sink when it keeps embeddings: each batch from the scorer carries the scores and KEPT_COLUMNS; the
    scores go to the scores sink, the embeddings (numbered from the shard's first row) to their own writer."""

    def __init__(
        self,
        scores_sink: Any,
        scores_schema: pa.Schema,
        writer: pq.ParquetWriter,
        kept_schema: pa.Schema,
        row_start: int,
        row_group_rows: int,
    ):
        self.scores_sink = scores_sink
        self.scores_schema = scores_schema
        self.writer = writer
        self.schema = kept_schema
        self.next_row = row_start
        self.row_group_rows = row_group_rows
        self.rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        n = batch.num_rows
        names = batch.schema.names
        kept = [batch.column(names.index(c)) for c in KEPT_COLUMNS]
        id_name = self.schema.field(0).name
        columns = [
            batch.column(names.index(id_name)),
            pa.array(np.arange(self.next_row, self.next_row + n, dtype=np.int64)),
            batch.column(names.index(schema.HAS_TEXT)),
            batch.column(names.index(schema.HAS_IMAGE)),
            kept[2],
            kept[0],
            kept[1],
        ]
        self.next_row += n
        self.rows += n
        self._pending.append(pa.RecordBatch.from_arrays(columns, schema=self.schema))
        self._pending_rows += n
        if self._pending_rows >= self.row_group_rows:
            self._flush()
        scores = [batch.column(i) for i, name in enumerate(names) if name not in KEPT_COLUMNS]
        self.scores_sink.write(pa.RecordBatch.from_arrays(scores, schema=self.scores_schema))

    def _flush(self) -> None:
        if self._pending:
            self.writer.write_table(
                pa.Table.from_batches(self._pending, schema=self.schema), row_group_size=self.row_group_rows
            )
        self._pending, self._pending_rows = [], 0

    def finish(self) -> None:
        self._flush()
        self.scores_sink.finish()


def record(plan: PartitionPlan, markers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The `embeddings` entry of a committed partition's `_SUCCESS.json`: where the parts are, which rows each holds,
    what made them (the encoders' identity) and from what (the input's sha256 and file times)."""
    assert plan.keep_embeddings is not None  # internal: only plans that keep embeddings record them
    parts: list[dict[str, Any]] = []
    for shard, marker in zip(plan.shards, markers):
        parts.append(
            {
                "part": plan.embeddings_part_name(shard.index),
                "row_start": plan.shard_row_start(shard.index),
                "rows": shard.num_rows,
                "bytes": marker.get("embeddings_bytes"),
            }
        )
    total = sum(p["bytes"] or 0 for p in parts)
    return {
        "format": FORMAT,
        "dtype": DTYPE,
        "location": storage.join(plan.output_dir, EMBEDDINGS_DIR),
        "parts": parts,
        "rows": plan.num_rows,
        "bytes": total,
        "bytes_per_row": round(total / plan.num_rows, 1) if plan.num_rows else None,
        "encoders": plan.keep_embeddings["encoders"],
        "input": {"sha256": plan.fingerprint["sha256"], "mtimes": plan.keep_embeddings["input_mtimes"]},
    }


# --------------------------------------------------------------------------------------------------- finding them


def _refusal(
    success: dict[str, Any], plan: PartitionPlan, bundle_identity: dict[str, Any], mtimes: dict[str, int]
) -> str | None:
    """Why the kept embeddings of a committed partition cannot score `plan` (None: they can)."""
    kept = success["embeddings"]
    if kept.get("format") != FORMAT:
        return f"they are in {kept.get('format')!r} form, not {FORMAT!r}"
    theirs = kept.get("encoders") or {}
    if theirs.get("digest") != bundle_identity["digest"]:
        return (
            f"other encoders made them ({theirs.get('precision')} {str(theirs.get('digest'))[:12]}; this bundle's "
            f"{bundle_identity['precision']} encoders are {bundle_identity['digest'][:12]})"
        )
    given = kept.get("input") or {}
    if (
        given.get("sha256") != plan.fingerprint["sha256"]
        or success.get("input", {}).get("sha256") != plan.fingerprint["sha256"]
    ):
        return "the posts partition changed since (its files, sizes or row counts differ)"
    if given.get("mtimes") != mtimes:
        return "the posts partition was rewritten since (a file's modification time differs)"
    return None


def _parts_present(location: str, parts: list[dict[str, Any]]) -> str | None:
    """None when every listed part is there with its recorded size, else what is not."""
    fs, path = storage.open_filesystem(location)
    sizes = {
        info.path.rsplit("/", 1)[-1]: info.size
        for info in fs.get_file_info(pafs.FileSelector(f"{path}/{EMBEDDINGS_DIR}", allow_not_found=True))
    }
    for p in parts:
        name = p["part"].rsplit("/", 1)[-1]
        if name not in sizes:
            return f"part {p['part']} is gone"
        if p.get("bytes") is not None and sizes[name] != p["bytes"]:
            return f"part {p['part']} changed size ({sizes[name]} bytes, {p['bytes']} recorded)"
    return None


def find(
    output_root: str, plan: PartitionPlan, bundle_identity: dict[str, Any], mtimes: dict[str, int]
) -> dict[str, Any] | None:
    """Kept embeddings that can score `plan` with the head alone: the newest commit of this partition, under any
    model version of `output_root` but the plan's own, whose embeddings have these encoders and this exact input.
    Every commit with embeddings that cannot be used is logged with the reason. None when there is none."""
    fs, root = storage.open_filesystem(output_root)
    try:
        entries = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError as e:
        error = storage.translate(e, output_root)
        if error is not None:
            raise error from e
        raise
    best: tuple[str, dict[str, Any]] | None = None
    for entry in sorted(entries, key=lambda e: e.path):
        name = entry.path.rsplit("/", 1)[-1]
        if entry.type != pafs.FileType.Directory or not name.startswith("model_version="):
            continue
        location = storage.join(output_root, name, plan.partition)
        if location.rstrip("/") == plan.output_dir.rstrip("/"):
            continue  # the plan's own output: begin() has withdrawn it, and commit replaces it
        success = read_success(location)
        if not success or not success.get("embeddings"):
            continue
        why = _refusal(success, plan, bundle_identity, mtimes) or _parts_present(
            location, success["embeddings"]["parts"]
        )
        if why is not None:
            logger.info("kept embeddings at %s not used: %s", location, why)
            continue
        if best is None or success.get("committed_at", "") > best[1].get("committed_at", ""):
            best = (location, success)
    if best is None:
        return None
    location, success = best
    kept = success["embeddings"]
    return {
        "location": kept["location"],
        "scores": location,
        "model_version": success["model_version"],
        "plan_id": success["plan_id"],
        "committed_at": success["committed_at"],
        "encoders": kept["encoders"],
        "parts": [{**p, "path": storage.join(location, p["part"])} for p in kept["parts"]],
    }


def check_source(source: dict[str, Any]) -> None:
    """At shard time: the commit the plan found is still the one there (EmbeddingsMismatch otherwise: plan again)."""
    success = read_success(source["scores"])
    if success is None or success.get("plan_id") != source["plan_id"] or not success.get("embeddings"):
        raise EmbeddingsMismatch(
            f"the kept embeddings at {source['location']} were withdrawn or rewritten after this partition was "
            "planned; plan it again (or pass --no-embedding-reuse to score from the posts)"
        )


def read_rows(source: dict[str, Any], start: int, stop: int) -> Iterator[pa.Table]:
    """The kept rows [start, stop) of the partition, in order, part by part and row group by row group."""
    for part in sorted(source["parts"], key=lambda p: p["row_start"]):
        p_start = part["row_start"]
        p_stop = p_start + part["rows"]
        if p_stop <= start or p_start >= stop:
            continue
        fs, path = storage.open_filesystem(part["path"])
        try:
            f = fs.open_input_file(path)
        except FileNotFoundError as e:
            raise EmbeddingsMismatch(
                f"kept embeddings part {part['path']} vanished after planning; plan the partition again "
                "(or pass --no-embedding-reuse)"
            ) from e
        with f:
            reader = pq.ParquetFile(f)
            offset = p_start
            for k in range(reader.metadata.num_row_groups):
                rows = reader.metadata.row_group(k).num_rows
                lo, hi = max(start, offset), min(stop, offset + rows)
                if lo < hi:
                    table = reader.read_row_group(k)
                    yield table.slice(lo - offset, hi - lo)
                offset += rows


def check_rows(kept: pa.Table, ids: pa.Array, first_row: int, location: str) -> None:
    """The kept rows are the posts' rows: the same positions, the same ids (EmbeddingsMismatch otherwise)."""
    n = len(ids)
    rows = kept.column(schema.ROW)
    if n and (rows[0].as_py() != first_row or rows[n - 1].as_py() != first_row + n - 1):
        raise EmbeddingsMismatch(
            f"kept embeddings at {location} hold rows {rows[0].as_py()}..{rows[n - 1].as_py()} where the posts have "
            f"rows {first_row}..{first_row + n - 1}; rescore with --no-embedding-reuse"
        )
    theirs = kept.column(0).combine_chunks()
    if theirs.type != ids.type:
        theirs = theirs.cast(ids.type)
    if not theirs.equals(ids):
        raise EmbeddingsMismatch(
            f"kept embeddings at {location} have other post ids than the posts at rows {first_row}..{first_row + n - 1}; "
            "rescore with --no-embedding-reuse"
        )


class RowCursor:
    """Takes the kept rows in the sizes the posts batches come in."""

    def __init__(self, tables: Iterator[pa.Table]):
        self._tables = tables
        self._buffer: pa.Table | None = None

    def take(self, n: int) -> pa.Table:
        parts, have = [], 0
        while have < n:
            if self._buffer is None or self._buffer.num_rows == 0:
                self._buffer = next(self._tables, None)
                if self._buffer is None:
                    raise EmbeddingsMismatch(f"kept embeddings ended {n - have} row(s) short of the posts")
            piece = self._buffer.slice(0, n - have)
            self._buffer = self._buffer.slice(piece.num_rows)
            parts.append(piece)
            have += piece.num_rows
        return pa.concat_tables(parts) if len(parts) != 1 else parts[0]


# --------------------------------------------------------------------------------------------------- distinct images


def carries_across_shards(precision: str, provider: str) -> bool:
    """Whether reused embeddings may cross from one shard to the next in a session without changing a byte: only
    where an image's embedding does not depend on the other images of its batch. int8 quantizes each batch's
    activations with that batch's scale (its embeddings move ~1e-3 with the company they keep), and GPU kernels may
    pick another algorithm per batch size; fp32 on the CPU computes each row alike. Elsewhere the cache lives for one
    shard, so a shard's part stays a function of the shard alone (a retry, a second worker and the one-call job all
    write the same bytes)."""
    return precision == FP32 and provider == CPU


@dataclass
class _Entry:
    last_batch: int  # the last batch that will read this entry (it is not evicted before that batch is scored)
    filled: bool = False
    ok: bool = False
    reason: str | None = None
    emb: np.ndarray | None = None


@dataclass
class Claimed:
    """A batch's rows as the cache sees them: their keys, and which rows decode and encode (the first of each)."""

    keys: list[bytes | None]  # content hash per row (None: no bytes)
    owner: list[bool]  # the row decodes and encodes its image; the other rows with its key reuse the result


class ImageCache:
    """Each distinct image decoded and encoded once: `claim` (before decoding, in the fetch thread) replaces bytes
    already seen by None, `resolve` (after encoding, in the main thread) gives every row its embedding, ok and
    reason. Batches are claimed and resolved in the same order; an entry lives until the last batch that claimed it
    is resolved, then in LRU order up to `max_entries`."""

    def __init__(self, max_entries: int = DEFAULT_IMAGE_CACHE_ENTRIES):
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.images = 0  # rows with image bytes seen
        self.encoded = 0  # distinct images decoded and encoded
        self.reused = 0  # rows that took an earlier row's result

    def begin(self, forget: bool = False) -> None:
        """Before a shard: forget entries a stopped run claimed but never resolved (no later batch resolves them), or
        every entry with `forget` (where an embedding depends on what shared its batch: see `carries_across_shards`)."""
        with self._lock:
            for key in [k for k, e in self._entries.items() if forget or not e.filled]:
                del self._entries[key]

    def claim(self, images: list[bytes | None], batch: int, claimed: Claimed) -> list[bytes | None]:
        """Hash the bytes of a window of a batch; returns what to decode (None where the image is known or pending)."""
        out: list[bytes | None] = []
        with self._lock:
            for data in images:
                if not data:
                    claimed.keys.append(None)
                    claimed.owner.append(False)
                    out.append(data)
                    continue
                key = hashlib.blake2b(data, digest_size=16).digest()
                entry = self._entries.get(key)
                claimed.keys.append(key)
                if entry is None:
                    self._entries[key] = _Entry(batch)
                    claimed.owner.append(True)
                    out.append(data)
                else:
                    entry.last_batch = batch
                    self._entries.move_to_end(key)
                    claimed.owner.append(False)
                    out.append(None)
        return out

    def resolve(self, claimed: Claimed, batch: int, emb: np.ndarray, ok: np.ndarray, reasons: list[str | None]) -> None:
        """Fill the owners' entries from their results, then the other keyed rows from the entries (in place)."""
        with self._lock:
            for i, (key, owner) in enumerate(zip(claimed.keys, claimed.owner)):
                if key is None:
                    continue
                self.images += 1
                entry = self._entries[key]
                if owner:
                    entry.filled, entry.ok, entry.reason = True, bool(ok[i]), reasons[i]
                    entry.emb = emb[i].copy() if ok[i] else None
                    self.encoded += 1
                    continue
                assert entry.filled, "an image reused before its first row was encoded"  # internal: claim order
                ok[i], reasons[i] = entry.ok, entry.reason
                if entry.ok:
                    emb[i] = entry.emb
                self.reused += 1
            while len(self._entries) > self.max_entries:
                key, entry = next(iter(self._entries.items()))
                if entry.last_batch > batch or not entry.filled:
                    break  # a later batch still needs it
                del self._entries[key]

    def counts(self) -> dict[str, int]:
        """images (rows with bytes), encoded (distinct: decoded and encoded), reused (rows served from the cache)."""
        return {"images": self.images, "encoded": self.encoded, "reused": self.reused}
