"""Synthetic features Parquet (DESIGN.md section 5) for tests, the demo and benchmarks.

Each post has a sentiment cue in both modalities, in the text only, or in the image only. The unimodal labels
follow the cue (neutral where a modality carries none) and the multimodal label is the MVSA combination of the
two: the polar one where one is neutral. So a model that listens to the wrong modality for a post is wrong,
which is what the meta weight nets are for. A few posts miss their text or their image (null embedding,
`has_text` / `has_image` false). Embeddings are L2-normalised like CLIP features.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ctmwa_batch import schema
from training.datasets.mvsa import MVSA_LABELS

logger = logging.getLogger(__name__)

CUES = ("both", "text", "image")  # where a post's sentiment cue is: `synthetic_cues` gives it per row


@dataclass(frozen=True)
class SyntheticSpec:
    """How the synthetic posts are drawn; defaults give a task a linear model does not solve outright."""

    cue_both: float = 0.5  # share of posts whose cue is in text and image
    cue_text_only: float = 0.25  # share whose cue is in the text alone (the rest: image alone)
    cue_snr: float = 3.0  # cue size along its prototype, in units of the noise's std along any direction (1/sqrt(dim))
    missing_text: float = 0.05  # share of posts without a text
    missing_image: float = 0.05  # share of posts without an image (never both)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / valid / test shares
    query_fraction: float = 0.1  # share of the train split marked `query`
    unimodal_labels: bool = True  # write t_label / v_label (False: nulls and metadata ctmwa.unimodal_labels=false)


def label_names(num_classes: int) -> list[str]:
    """MVSA's names for 3 classes; otherwise class_k with the middle class called neutral."""
    if num_classes == 3:
        return list(MVSA_LABELS)
    return ["neutral" if k == num_classes // 2 else f"class_{k}" for k in range(num_classes)]


def synthetic_table(n: int, num_classes: int = 3, dim: int = 512, seed: int = 0, spec: SyntheticSpec = SyntheticSpec()) -> pa.Table:
    """n synthetic posts as a features table (schema `ctmwa_batch.schema.FEATURES_SCHEMA` plus label metadata)."""
    if n < 10:
        raise ValueError(f"n = {n} is too small for three splits; use n >= 10")
    rng = np.random.default_rng(seed)
    neutral = num_classes // 2
    proto_t, proto_v, label, kind = _draw_cues(rng, n, num_classes, dim, spec)
    cue_in_text = (kind == 0) | (kind == 1)
    cue_in_image = (kind == 0) | (kind == 2)
    t_label = np.where(cue_in_text, label, neutral)
    v_label = np.where(cue_in_image, label, neutral)

    # Noise of norm about 1 has std 1/sqrt(dim) along any direction; scaling the cue alike keeps the task
    # equally hard at every width. Some cues are faint.
    strength = spec.cue_snr / np.sqrt(dim) * rng.uniform(0.3, 1.7, (n, 1))  # (n, 1)
    text = proto_t[t_label] * strength + rng.standard_normal((n, dim)) / np.sqrt(dim)  # (n, D)
    image = proto_v[v_label] * strength + rng.standard_normal((n, dim)) / np.sqrt(dim)  # (n, D)
    text, image = _unit(text).astype(np.float32), _unit(image).astype(np.float32)

    u = rng.random(n)
    has_text = u >= spec.missing_text
    has_image = ~((u >= spec.missing_text) & (u < spec.missing_text + spec.missing_image))

    order = rng.permutation(n)
    n_train, n_valid = int(round(n * spec.split[0])), int(round(n * spec.split[1]))
    split = np.empty(n, dtype=object)
    split[order[:n_train]] = "train"
    split[order[n_train : n_train + n_valid]] = "valid"
    split[order[n_train + n_valid :]] = "test"
    query = np.zeros(n, dtype=bool)
    query[order[: max(1, int(round(n_train * spec.query_fraction)))]] = True

    def emb(values: np.ndarray, present: np.ndarray) -> pa.Array:
        flat = pa.array(values.reshape(-1), type=pa.float32())
        offsets = pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~present))

    unimodal = spec.unimodal_labels
    columns = {
        schema.POST_ID: pa.array([f"syn-{seed}-{i:06d}" for i in range(n)], pa.string()),
        schema.SPLIT: pa.array(split.tolist(), pa.string()),
        schema.TEXT_EMB: emb(text, has_text),
        schema.IMAGE_EMB: emb(image, has_image),
        schema.LABEL: pa.array(label, pa.int64()),
        schema.T_LABEL: pa.array(t_label if unimodal else [None] * n, pa.int64()),
        schema.V_LABEL: pa.array(v_label if unimodal else [None] * n, pa.int64()),
        schema.QUERY: pa.array(query),
        schema.HAS_TEXT: pa.array(has_text),
        schema.HAS_IMAGE: pa.array(has_image),
    }
    metadata = {
        schema.LABELS_KEY: json.dumps(label_names(num_classes)),
        schema.UNIMODAL_KEY: "true" if unimodal else "false",
        "ctmwa.source": f"synthetic(n={n}, num_classes={num_classes}, dim={dim}, seed={seed})",
    }
    return pa.table(columns, schema=schema.FEATURES_SCHEMA.with_metadata(metadata))


def write_synthetic_features(
    path: str | Path, n: int = 2000, num_classes: int = 3, dim: int = 512, seed: int = 0, spec: SyntheticSpec = SyntheticSpec()
) -> Path:
    """Write n synthetic posts to a features Parquet at `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(synthetic_table(n, num_classes, dim, seed, spec), path)
    logger.info("wrote %d synthetic posts (%d classes, %d-d) to %s", n, num_classes, dim, path)
    return path


def synthetic_cues(n: int, num_classes: int = 3, dim: int = 512, seed: int = 0, spec: SyntheticSpec = SyntheticSpec()) -> np.ndarray:
    """Where each post of `synthetic_table(n, num_classes, dim, seed, spec)` has its cue: (n,) of CUES, row order."""
    _, _, _, kind = _draw_cues(np.random.default_rng(seed), n, num_classes, dim, spec)
    return np.asarray(CUES, dtype=object)[kind]


def _draw_cues(
    rng: np.random.Generator, n: int, num_classes: int, dim: int, spec: SyntheticSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # The first draws of a table: prototypes, labels and where each cue is (an index into CUES).
    # Prototypes: one direction per class and modality; the neutral one carries no sentiment.
    proto_t = _unit(rng.standard_normal((num_classes, dim)))  # (C, D)
    proto_v = _unit(rng.standard_normal((num_classes, dim)))  # (C, D)
    label = rng.integers(0, num_classes, n)  # (n,)
    kind = rng.choice(3, n, p=[spec.cue_both, spec.cue_text_only, 1 - spec.cue_both - spec.cue_text_only])
    return proto_t, proto_v, label, kind


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
