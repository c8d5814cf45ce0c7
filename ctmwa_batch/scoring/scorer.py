"""Score posts: a bundle's encoders and head on record batches of posts -> record batches of scores.

`Scorer(bundle, config).score(batch)` maps posts (id, text, image bytes or path) to the scores schema
(ctmwa_batch.schema.scores_schema), one output row per input row, always (DESIGN.md sections 4, 5, 8):

- status `ok` (text and image), `image_missing`, `text_missing`, `no_content` (neither: not scored) or `error`
  (a null id: the row is output but not scored, since nothing could join it back);
- `error` holds a short reason wherever something present was unusable ("image: not an image",
  "image: truncated image: ...", "id: null"); a null, empty or whitespace text, or a null or empty image, is a
  missing modality, not an error;
- `text_sentiment` / `image_sentiment` are the unimodal heads' predictions where that modality is present (null
  where it is missing: there the head only saw the translation of the other modality); `text_weight` and
  `image_weight` are the weight nets' outputs (the paper's meta-learned loss weights) for every scored row;
  `text_evidence` / `image_evidence` say how strongly that modality on its own supports the predicted sentiment
  (null where the modality is missing, and everywhere for a head exported before these outputs existed).

The job (ctmwa_batch.scoring.job) runs the same steps split into the stages of ctmwa_batch.scoring.pipeline: `prepare` (column
extraction, tokenization) in a reader thread, image decoding in a process pool, `infer` (encoders + head + output
assembly) in the main thread.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ctmwa_batch import schema
from ctmwa_batch.config import ScoreConfig, parse_time
from ctmwa_batch.errors import BundleError, InputSchemaError
from ctmwa_batch.io.fetch import fetch_config, fetch_images
from ctmwa_batch.model.bundle import (
    CORE_HEAD_OUTPUTS,
    EVIDENCE_OUTPUTS,
    HEAD,
    HEAD_INPUTS,
    HEAD_OUTPUTS,
    Bundle,
    load_bundle,
)
from ctmwa_batch.model.posts import check_posts_schema, image_errors, image_items
from ctmwa_batch.model.preprocess import MAX_REASON_CHARS, ImageSpec, TokenizedTexts, decode_images
from ctmwa_batch.model.runtime import RuntimeConfig, create_session
from ctmwa_batch.scoring.embed import Encoders
from ctmwa_batch.scoring.embeddings import KEPT_COLUMNS, Claimed, ImageCache, kept_columns

logger = logging.getLogger(__name__)

# The head graph's contract (DESIGN.md section 5).
# Image decode reasons that mean "no image" rather than "a bad image".
SCHEMA_METADATA_KEY = "ctmwa_batch.score"


@dataclass
class Prepared:
    """A batch after the CPU-side steps that need no model: ids, tokens, image bytes (to decode) and path errors."""

    ids: pa.Array  # the id column, as read
    tokens: TokenizedTexts  # tokenized texts (ok False where missing)
    images: list[bytes | None]  # image bytes (None where null, unreadable, or still to fetch)
    read_errors: list[str | None]  # why an image URI/path gave no bytes (set by the fetch stage)
    passthrough: list[pa.Array] = field(default_factory=list)  # config.passthrough columns, as read
    locations: list[str | None] | None = None  # image URIs/paths to fetch (path columns); None when bytes
    claimed: Claimed | None = None  # distinct images: which rows encode, which reuse (set when the scorer has a cache)
    batch: int = 0  # the batch's number in its scoring session (the image cache's clock)

    @property
    def num_rows(self) -> int:
        return len(self.ids)


def _argmax_or_null(probs: np.ndarray, valid: np.ndarray) -> pa.Array:
    return pa.array(np.argmax(probs, axis=1) if len(probs) else np.zeros(0, np.int64), type=pa.int64(), mask=~valid)


def _float_column(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    return pa.array(values.astype(np.float32, copy=False), type=pa.float32(), mask=~valid)


def _reason(prefix: str, reason: str) -> str:
    text = f"{prefix}: {reason}"
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


class Scorer:
    """A bundle's sessions (image and text encoders, head), loaded once; `score(batch)` scores a batch of posts."""

    def __init__(
        self,
        bundle: Bundle | str | Path,
        config: ScoreConfig | dict[str, Any] | None = None,
        labels: list[str] | None = None,
        *,
        encoders: bool = True,
        image_cache: ImageCache | None = None,
    ):
        """`labels`: the bundle's, when the caller has checked it already (require_scoring_bundle); else checked here.
        `encoders=False`: the head alone (scoring kept embeddings: no encoder session is created). `image_cache`:
        each distinct image decoded and encoded once (see `claim`)."""
        self.config = ScoreConfig.coerce(config)
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.labels = list(labels) if labels is not None else require_scoring_bundle(self.bundle)
        runtime = RuntimeConfig(device=self.config.device, intra_op_threads=self.config.intra_op_threads)
        self.encoders = Encoders(self.bundle, runtime, self.config.precision) if encoders else None
        self.encoder_sessions = 0 if self.encoders is None else 2  # what the run's stats report
        self.image_cache = image_cache
        self.head = create_session(self.bundle.path(HEAD), runtime)
        if set(self.head.input_names) != set(HEAD_INPUTS) or not set(CORE_HEAD_OUTPUTS) <= set(self.head.output_names):
            raise BundleError(
                f"{HEAD} of bundle {str(self.bundle.root)!r} has inputs {self.head.input_names} and outputs "
                f"{self.head.output_names}; expected inputs {list(HEAD_INPUTS)} and outputs {list(HEAD_OUTPUTS)}: "
                "re-export the head (ctmwa-export head)"
            )
        # A head from before the evidence outputs still scores: its evidence columns are null, and the log says why.
        self.has_evidence = set(EVIDENCE_OUTPUTS) <= set(self.head.output_names)
        if not self.has_evidence:
            logger.warning(
                "%s of bundle %s has no %s outputs (exported by an older ctmwa-export): those columns will be null; "
                "re-export the head (ctmwa-export head) to fill them",
                HEAD,
                self.bundle.root,
                "/".join(EVIDENCE_OUTPUTS),
            )
        self.model_version = self.bundle.model_version
        self._labels = pa.array(self.labels, type=pa.string())
        self._fixed_time = parse_time(self.config.scored_at) if self.config.scored_at else None
        # seconds spent per model stage since construction (read by the job for its timings)
        self.timings: dict[str, float] = {"encode_text": 0.0, "encode_image": 0.0, "head": 0.0}

    @property
    def provider(self) -> str:
        """Execution provider the sessions run on."""
        return self.head.provider

    @property
    def precision(self) -> str:
        """Encoder variant the sessions run (auto resolved)."""
        return self._require_encoders().precision

    @property
    def image_spec(self) -> ImageSpec:
        """How this bundle decodes images (what the decoding pool needs)."""
        return self.bundle.image_spec

    def _require_encoders(self) -> Encoders:
        assert self.encoders is not None, "a head-only scorer has no encoders"  # internal: the job never asks
        return self.encoders

    def claim(self, prepared: Prepared, images: list[bytes | None]) -> list[bytes | None]:
        """Before decoding (the pipeline's fetch thread): the images of `prepared` (or of one window of it) to decode,
        None where an earlier row has the same bytes (its result is reused in `infer`)."""
        if self.image_cache is None:
            return images
        if prepared.claimed is None:
            prepared.claimed = Claimed([], [])
        return self.image_cache.claim(images, prepared.batch, prepared.claimed)

    def output_schema(self, id_field: pa.Field, passthrough_fields: Sequence[pa.Field] = ()) -> pa.Schema:
        """The scores schema for this model, with the input's id field and any passthrough fields after the scores."""
        base = schema.scores_schema(self.labels, id_field)
        clash = sorted({f.name for f in passthrough_fields} & set(base.names))
        if clash:
            raise InputSchemaError(
                f"passthrough column(s) {clash} would replace score columns of the same name; drop them from --passthrough"
            )
        metadata = {SCHEMA_METADATA_KEY: json.dumps({"model_version": self.model_version, "labels": self.labels})}
        return schema.scores_schema(self.labels, id_field, passthrough_fields).with_metadata(metadata)

    def input_columns(self) -> list[str]:
        """The input columns scoring reads (and nothing else)."""
        c = self.config
        return list(dict.fromkeys(x for x in (c.id_column, c.text_column, c.image_column, *c.passthrough) if x))

    # ------------------------------------------------------------------------------------------- stages

    def prepare(self, batch: pa.RecordBatch, base: Path | None = None, *, image_paths: bool | None = None) -> Prepared:
        """Extract the columns of a batch and tokenize its texts (no model, no image decoding yet)."""
        c = self.config
        if image_paths is None:
            image_paths = check_posts_schema(batch.schema, c, "the record batch")
        n = batch.num_rows
        texts = batch.column(c.text_column).to_pylist() if c.text_column else [None] * n
        images, locations = image_items(batch, c.image_column, image_paths)
        return Prepared(
            ids=batch.column(c.id_column),
            tokens=self._require_encoders().tokenizer.encode(texts),
            images=images,
            read_errors=[None] * n,
            passthrough=[batch.column(name) for name in c.passthrough],
            locations=locations,
        )

    def infer(
        self,
        prepared: Prepared,
        decoded: tuple[np.ndarray, np.ndarray, list[str | None]],
        out_schema: pa.Schema | None = None,
        *,
        keep: bool = False,
    ) -> pa.RecordBatch:
        """Encoders + head on a prepared batch and its decoded images -> the scores record batch; with `keep`, plus
        the encoders' outputs in ctmwa_batch.scoring.embeddings.KEPT_COLUMNS (for the sink to split off)."""
        pixels, image_ok, image_reasons = decoded
        n = prepared.num_rows
        encoders = self._require_encoders()
        t0 = time.perf_counter()
        text_emb = encoders.encode_tokens(prepared.tokens).emb
        t1 = time.perf_counter()
        image_emb = encoders.encode_pixels(pixels, image_ok)
        self.timings["encode_text"] += t1 - t0
        self.timings["encode_image"] += time.perf_counter() - t1
        if prepared.claimed is not None:  # rows whose bytes an earlier row had: that row's embedding, status, error
            assert self.image_cache is not None  # internal: only a scorer with a cache claims
            image_ok, image_reasons = np.array(image_ok, dtype=bool), list(image_reasons)
            self.image_cache.resolve(prepared.claimed, prepared.batch, image_emb, image_ok, image_reasons)
        # A fetch error reads as it stands ("image not found: s3://..."); a decode error gets the "image: " prefix.
        decode_errors = image_errors(image_ok, image_reasons, [None] * n)
        row_errors = [
            fetch or (None if bad is None else _reason("image", bad))
            for fetch, bad in zip(prepared.read_errors, decode_errors)
        ]
        text_ok = prepared.tokens.ok
        batch = self.score_embeddings(
            prepared.ids, prepared.passthrough, text_emb, image_emb, text_ok, image_ok, row_errors, out_schema
        )
        if not keep:
            return batch
        columns = [*batch.columns, *kept_columns(text_emb, image_emb, text_ok, image_ok, row_errors)]
        return pa.RecordBatch.from_arrays(columns, names=[*batch.schema.names, *KEPT_COLUMNS])

    def score_embeddings(
        self,
        ids: pa.Array,
        passthrough: Sequence[pa.Array],
        text_emb: np.ndarray,
        image_emb: np.ndarray,
        text_ok: np.ndarray,
        image_ok: np.ndarray,
        row_errors: list[str | None],
        out_schema: pa.Schema | None = None,
    ) -> pa.RecordBatch:
        """The head on embeddings (zeros where a modality is missing) -> the scores record batch; `row_errors` says
        why a present image was unusable. What `infer` runs after the encoders, and head-only rescoring runs alone."""
        n = len(ids)
        id_ok = ~np.asarray(ids.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        scored = id_ok & (text_ok | image_ok)
        outs = self._run_head(text_emb, image_emb, text_ok, image_ok, scored)
        status, errors = _statuses(id_ok, text_ok, image_ok, row_errors)
        probs, C = outs["probs"], len(self.labels)
        sentiment = self._labels.take(_argmax_or_null(probs, scored))
        columns: list[pa.Array] = [
            ids,
            sentiment,
            _float_column(probs.max(axis=1) if n else np.zeros(0, np.float32), scored),
            *[_float_column(probs[:, k], scored) for k in range(C)],
            _float_column(outs["text_weight"], scored),
            _float_column(outs["image_weight"], scored),
            _float_column(outs["text_evidence"], scored & text_ok & self.has_evidence),
            _float_column(outs["image_evidence"], scored & image_ok & self.has_evidence),
            self._labels.take(_argmax_or_null(outs["text_probs"], scored & text_ok)),
            self._labels.take(_argmax_or_null(outs["image_probs"], scored & image_ok)),
            pa.array(text_ok, type=pa.bool_()),
            pa.array(image_ok, type=pa.bool_()),
            pa.array(status.tolist(), type=pa.string()),
            pa.array(errors, type=pa.string()),
            pa.repeat(pa.scalar(self.model_version, pa.string()), n),
            pa.repeat(pa.scalar(self._fixed_time or dt.datetime.now(dt.UTC), pa.timestamp("us", tz="UTC")), n),
            *passthrough,
        ]
        if out_schema is None:
            id_field = pa.field(self.config.id_column, ids.type)
            extra = [pa.field(name, col.type) for name, col in zip(self.config.passthrough, passthrough)]
            out_schema = self.output_schema(id_field, extra)
        columns = [col if col.type == f.type else col.cast(f.type) for col, f in zip(columns, out_schema)]
        return pa.RecordBatch.from_arrays(columns, schema=out_schema)

    def _run_head(
        self, text_emb: np.ndarray, image_emb: np.ndarray, text_ok: np.ndarray, image_ok: np.ndarray, scored: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The head on the scored rows; zeros elsewhere. Timed."""
        n, C = len(scored), len(self.labels)
        t0 = time.perf_counter()
        outs: dict[str, np.ndarray] = {
            name: np.zeros((n, C), np.float32) for name in ("probs", "text_probs", "image_probs")
        }
        outs |= {name: np.zeros(n, np.float32) for name in ("text_weight", "image_weight", *EVIDENCE_OUTPUTS)}
        if scored.any():
            got = self.head.run(
                {
                    schema.TEXT_EMB: text_emb[scored],
                    schema.IMAGE_EMB: image_emb[scored],
                    schema.HAS_TEXT: text_ok[scored],
                    schema.HAS_IMAGE: image_ok[scored],
                }
            )
            for name in outs:
                if name in got:  # a head without the evidence outputs leaves those at zero (written as null)
                    outs[name][scored] = np.asarray(got[name]).reshape(outs[name][scored].shape)
        self.timings["head"] += time.perf_counter() - t0
        return outs

    def score(self, batch: pa.RecordBatch, base: Path | None = None) -> pa.RecordBatch:
        """Score one record batch of posts in this process (the job overlaps these steps across batches). `base`: the
        folder relative image paths resolve against, also an allowed image root (besides config.image_roots)."""
        prepared = self.prepare(batch, base)
        if prepared.locations is not None:
            prepared.images, prepared.read_errors = fetch_images(
                prepared.locations,
                base or Path.cwd(),
                fetch_config(self.config, str(base) if base is not None else None),
            )
        return self.infer(prepared, decode_images(prepared.images, self.image_spec))


def _statuses(
    id_ok: np.ndarray, text_ok: np.ndarray, image_ok: np.ndarray, image_errors: list[str | None]
) -> tuple[np.ndarray, list[str | None]]:
    """Each row's status and error text (a null id; a present image that could not be used, its text as given)."""
    n = len(id_ok)
    status = np.full(n, schema.STATUS_NO_CONTENT, dtype=object)
    status[text_ok & image_ok] = schema.STATUS_OK
    status[text_ok & ~image_ok] = schema.STATUS_IMAGE_MISSING
    status[~text_ok & image_ok] = schema.STATUS_TEXT_MISSING
    status[~id_ok] = schema.STATUS_ERROR
    errors: list[str | None] = [None] * n
    for i, image_error in enumerate(image_errors):
        reasons = ([] if id_ok[i] else ["id: null"]) + ([] if image_error is None else [image_error])
        if reasons:
            errors[i] = "; ".join(reasons)
    return status, errors


def require_scoring_bundle(bundle: Bundle) -> list[str]:
    """A bundle's labels, or BundleError when it cannot score (no head, no labels)."""
    bundle.require(HEAD)
    labels = bundle.labels
    if not labels:
        raise BundleError(
            f"bundle {str(bundle.root)!r} has a head but no labels in its manifest; re-export the head (ctmwa-export head)"
        )
    return list(labels)


def value_counts(batch: pa.RecordBatch | pa.Table, column: str) -> dict[str, int]:
    """Counts of the non-null values of a string column (statuses, sentiments)."""
    counts = pc.value_counts(batch.column(column))
    return {str(v["values"]): int(v["counts"]) for v in counts.to_pylist() if v["values"] is not None}
