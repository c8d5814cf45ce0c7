"""Read a features Parquet (DESIGN.md section 5) into train / valid / test / query tensors.

Every problem with the file is a `DatasetError` that names the file, the column, the bad value (and the
post_id where one row is at fault) and what to do about it; nothing ends in a traceback from pyarrow or torch.

The query set is the train rows with `query` true, as `ctmwa-train prepare` (or whoever wrote the file) marked them:
training does not draw again. They are taken out of the training batches, so the weight nets are judged on posts
the backbone does not fit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ctmwa_batch import schema
from ctmwa_training.errors import DatasetError

logger = logging.getLogger(__name__)

LABELS_KEY = schema.LABELS_KEY
UNIMODAL_KEY = schema.UNIMODAL_KEY


@dataclass
class FeatureBatch:
    """Rows of a features file as tensors; N rows."""

    post_id: np.ndarray  # (N,) str, for error messages and predictions
    text: torch.Tensor  # (N, Dt) float32; zeros where has_text is false
    image: torch.Tensor  # (N, Dv) float32; zeros where has_image is false
    has_text: torch.Tensor  # (N,) bool
    has_image: torch.Tensor  # (N,) bool
    label: torch.Tensor  # (N,) int64 multimodal label
    t_label: torch.Tensor  # (N,) int64 text label (the multimodal label where the file has none)
    v_label: torch.Tensor  # (N,) int64 image label (the multimodal label where the file has none)

    def __len__(self) -> int:
        return len(self.label)

    def take(self, index: torch.Tensor | np.ndarray) -> FeatureBatch:
        """The rows at `index` (1-d integer or boolean)."""
        index_np = index.numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        index_t = torch.as_tensor(index_np)
        values = {
            f.name: (getattr(self, f.name)[index_np] if f.name == "post_id" else getattr(self, f.name)[index_t])
            for f in fields(self)
        }
        return FeatureBatch(**values)

    def without(self, text: bool = False, image: bool = False) -> FeatureBatch:
        """A copy with every text (or image) marked missing: the missing-modality evaluation."""
        out = replace(self)
        if text:
            out.has_text = torch.zeros_like(self.has_text)
        if image:
            out.has_image = torch.zeros_like(self.has_image)
        return out


@dataclass
class FeatureSet:
    """A features file read for training."""

    path: Path  # the file it came from
    labels: list[str]  # class names, index = label value
    unimodal_labels: bool  # false: the query step uses the multimodal label for all three heads
    text_dim: int  # Dt
    image_dim: int  # Dv
    train: FeatureBatch  # training batches (query rows taken out)
    valid: FeatureBatch  # model selection
    test: FeatureBatch  # reported metrics
    query: FeatureBatch  # meta query set (from the train split)

    def train_split(self) -> FeatureBatch:
        """Every row of the train split: the training batches and the query set together."""
        return FeatureBatch(
            **{f.name: _cat(getattr(self.train, f.name), getattr(self.query, f.name)) for f in fields(FeatureBatch)}
        )


def read_features(
    path: str | Path,
    labels: list[str] | None = None,
    unimodal_labels: bool | None = None,
    text_dim: int | None = None,
    image_dim: int | None = None,
    with_query: bool = True,
) -> FeatureSet:
    """Read and validate a features Parquet.

    `labels` overrides the file's `ctmwa.labels` metadata; `unimodal_labels=False` declares that the dataset has
    no text/image labels (None: metadata `ctmwa.unimodal_labels`, default true); `text_dim` / `image_dim` are the
    widths the model expects (None: the file's own). `with_query=False` (late fusion) keeps the whole train
    split for training and leaves the query set empty.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(
            f"features file {path} does not exist; pass --features with a Parquet written by `ctmwa-train prepare`"
        )
    try:
        file_schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"{path} is not a readable Parquet file ({e}); pass the features Parquet") from e

    metadata = {k.decode(): v.decode() for k, v in (file_schema.metadata or {}).items()}
    unimodal = _unimodal_flag(path, metadata, unimodal_labels)
    required = [c for c in schema.FEATURES_REQUIRED if unimodal or c not in (schema.T_LABEL, schema.V_LABEL)]
    missing = [c for c in required if c not in file_schema.names]
    if missing:
        hint = ""
        if set(missing) & {schema.T_LABEL, schema.V_LABEL}:
            hint = (
                f" (a dataset without unimodal labels: pass --no-unimodal-labels or set metadata {UNIMODAL_KEY}=false)"
            )
        raise DatasetError(
            f"{path}: column(s) {missing} missing; columns are {file_schema.names}; "
            f"a features file needs {list(required)}{hint}"
        )
    wanted = [c for c in (*schema.FEATURES_REQUIRED, schema.HAS_TEXT, schema.HAS_IMAGE) if c in file_schema.names]
    try:
        table = pq.read_table(path, columns=wanted)
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"cannot read columns {wanted} of {path}: {e}") from e
    if table.num_rows == 0:
        raise DatasetError(f"{path} has no rows; check the prepare step's input")

    post_id = _strings(table, schema.POST_ID, path)
    split = _strings(table, schema.SPLIT, path)
    bad_split = sorted(set(split.tolist()) - set(schema.SPLITS))
    if bad_split:
        row = int(np.flatnonzero(~np.isin(split, schema.SPLITS))[0])
        raise DatasetError(
            f"{path}: column {schema.SPLIT!r} has value(s) {bad_split} (first at post_id {post_id[row]!r}); "
            f"allowed are {list(schema.SPLITS)}; rename the splits when preparing the features"
        )

    names = _label_names(path, metadata, labels, table)
    label = _ints(table, schema.LABEL, path, post_id, len(names), names, nullable=False)
    if unimodal:
        t_label = _ints(table, schema.T_LABEL, path, post_id, len(names), names, nullable=True)
        v_label = _ints(table, schema.V_LABEL, path, post_id, len(names), names, nullable=True)
    else:
        logger.info(
            "%s has no unimodal labels: the query step uses the multimodal label for all three heads", path.name
        )
        t_label = v_label = np.full(len(label), -1)
    query = _bools(table, schema.QUERY, path, post_id, default=None)

    text, text_valid = _embeddings(table, schema.TEXT_EMB, path, post_id, text_dim, "--text-dim / model text_dim")
    image, image_valid = _embeddings(table, schema.IMAGE_EMB, path, post_id, image_dim, "--image-dim / model image_dim")
    has_text = _presence(table, schema.HAS_TEXT, schema.TEXT_EMB, text_valid, path, post_id)
    has_image = _presence(table, schema.HAS_IMAGE, schema.IMAGE_EMB, image_valid, path, post_id)
    text[~has_text] = 0.0
    image[~has_image] = 0.0
    empty = ~has_text & ~has_image
    if empty.any():
        logger.warning(
            "%s: dropping %d row(s) with neither text nor image (first post_id %r)",
            path.name,
            int(empty.sum()),
            post_id[np.flatnonzero(empty)[0]],
        )

    def rows(mask: np.ndarray) -> FeatureBatch:
        idx = np.flatnonzero(mask & ~empty)
        lab = label[idx]
        return FeatureBatch(
            post_id=post_id[idx],
            text=torch.from_numpy(text[idx]),
            image=torch.from_numpy(image[idx]),
            has_text=torch.from_numpy(has_text[idx]),
            has_image=torch.from_numpy(has_image[idx]),
            label=torch.from_numpy(lab),
            t_label=torch.from_numpy(np.where(t_label[idx] >= 0, t_label[idx], lab)),
            v_label=torch.from_numpy(np.where(v_label[idx] >= 0, v_label[idx], lab)),
        )

    is_train = split == "train"
    for name in schema.SPLITS:
        if not ((split == name) & ~empty).any():
            counts = {s: int((split == s).sum()) for s in schema.SPLITS}
            raise DatasetError(
                f"{path}: split {name!r} is empty (rows per split: {counts}); every features file needs "
                f"train, valid and test rows; re-run `ctmwa-train prepare` with a split that gives each some"
            )

    if with_query:
        query_rows = _query_rows(path, is_train & ~empty, query)
    else:
        query_rows = np.zeros(0, dtype=np.int64)
    if unimodal:
        lacking = query_rows[(t_label[query_rows] < 0) | (v_label[query_rows] < 0)]
        if len(lacking):
            raise DatasetError(
                f"{path}: {len(lacking)} query row(s) have no {schema.T_LABEL!r}/{schema.V_LABEL!r} (first post_id "
                f"{post_id[lacking[0]]!r}); the meta query step needs unimodal labels; give them, or declare the dataset "
                f"has none with --no-unimodal-labels (metadata {UNIMODAL_KEY}=false)"
            )
    in_query = np.zeros(len(split), dtype=bool)
    in_query[query_rows] = True
    train_rows = is_train & ~in_query
    if not (train_rows & ~empty).any():
        raise DatasetError(
            f"{path}: split 'train' is empty once the {len(query_rows)} query row(s) are taken out; "
            "mark fewer query rows (`ctmwa-train prepare --query-fraction`) or add training rows"
        )
    out = FeatureSet(
        path=path,
        labels=names,
        unimodal_labels=unimodal,
        text_dim=text.shape[1],
        image_dim=image.shape[1],
        train=rows(train_rows),
        valid=rows(split == "valid"),
        test=rows(split == "test"),
        query=rows(in_query),
    )
    logger.info(
        "read %s: %d train, %d query, %d valid, %d test rows; %d classes %s; text %d-d, image %d-d",
        path.name,
        len(out.train),
        len(out.query),
        len(out.valid),
        len(out.test),
        len(names),
        names,
        out.text_dim,
        out.image_dim,
    )
    return out


def _unimodal_flag(path: Path, metadata: dict[str, str], given: bool | None) -> bool:
    if given is not None:
        return given
    raw = metadata.get(UNIMODAL_KEY, "true").strip().lower()
    if raw not in ("true", "false"):
        raise DatasetError(f"{path}: metadata {UNIMODAL_KEY}={raw!r}; expected 'true' or 'false'")
    return raw == "true"


def _label_names(path: Path, metadata: dict[str, str], given: list[str] | None, table: pa.Table) -> list[str]:
    if given is not None:
        names = list(given)
        source = "--labels"
    elif LABELS_KEY in metadata:
        try:
            names = json.loads(metadata[LABELS_KEY])
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: metadata {LABELS_KEY} is not JSON ({e}); pass --labels a,b,c") from e
        source = f"metadata {LABELS_KEY}"
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DatasetError(
                f"{path}: metadata {LABELS_KEY}={metadata[LABELS_KEY]!r} is not a JSON list of strings; pass --labels a,b,c"
            )
    else:
        try:
            top = pc.max(table.column(schema.LABEL)).as_py()
        except (pa.ArrowException, TypeError):
            top = None
        if not isinstance(top, int) or top < 1:
            raise DatasetError(
                f"{path}: no metadata {LABELS_KEY} and no usable {schema.LABEL!r} values; pass --labels a,b,c"
            )
        names = [f"class_{k}" for k in range(top + 1)]
        logger.warning(
            "%s has no metadata %s; calling the classes %s (pass --labels to name them)", path.name, LABELS_KEY, names
        )
        return names
    if len(names) < 2 or len(set(names)) != len(names):
        raise DatasetError(f"{path}: label names {names} (from {source}) must be at least two distinct names")
    return names


def _column(table: pa.Table, name: str) -> pa.Array:
    return table.column(name).combine_chunks()


def _strings(table: pa.Table, name: str, path: Path) -> np.ndarray:
    col = _column(table, name)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise DatasetError(
            f"{path}: column {name!r} has type {col.type}; expected string; cast it when preparing the features"
        )
    if col.null_count:
        raise DatasetError(f"{path}: column {name!r} has {col.null_count} null value(s); every row needs one")
    return np.asarray(col.to_pylist(), dtype=object)


def _ints(
    table: pa.Table, name: str, path: Path, post_id: np.ndarray, n_classes: int, names: list[str], nullable: bool
) -> np.ndarray:
    """Integer class column as int64; -1 stands for null where nulls are allowed."""
    col = _column(table, name)
    if not pa.types.is_integer(col.type):
        raise DatasetError(f"{path}: column {name!r} has type {col.type}; expected integer class indices into {names}")
    if col.null_count and not nullable:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DatasetError(
            f"{path}: column {name!r} is null at post_id {post_id[row]!r} ({col.null_count} null row(s)); every row needs a label"
        )
    values = col.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    bad = valid & ((values < 0) | (values >= n_classes))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{path}: column {name!r} has value {int(values[row])} at post_id {post_id[row]!r} ({int(bad.sum())} row(s) out of "
            f"range); labels must lie in 0..{n_classes - 1} for the classes {names}; fix the labels or pass --labels with all class names"
        )
    return values


def _bools(table: pa.Table, name: str, path: Path, post_id: np.ndarray, default: bool | None) -> np.ndarray:
    col = _column(table, name)
    if not pa.types.is_boolean(col.type):
        raise DatasetError(f"{path}: column {name!r} has type {col.type}; expected bool")
    if col.null_count and default is None:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DatasetError(
            f"{path}: column {name!r} is null at post_id {post_id[row]!r}; write true or false for every row"
        )
    return col.fill_null(bool(default)).to_numpy(zero_copy_only=False).astype(bool)


def _embeddings(
    table: pa.Table, name: str, path: Path, post_id: np.ndarray, expected: int | None, fix: str
) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) float32 with zeros in null rows, and the (N,) validity mask."""
    col = _column(table, name)
    t = col.type
    if not (
        pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
    ) or not pa.types.is_floating(t.value_type):
        raise DatasetError(f"{path}: column {name!r} has type {t}; expected list<float32> (one embedding per row)")
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if not valid.any():
        raise DatasetError(f"{path}: column {name!r} is null in every row; the features were not embedded")
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
    width = int(expected) if expected is not None else int(lengths[np.flatnonzero(valid)[0]])
    bad = valid & (lengths != width)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        source = "the model expects" if expected is not None else f"the first {name} row has"
        raise DatasetError(
            f"{path}: column {name!r} has width {int(lengths[row])} at post_id {post_id[row]!r} ({int(bad.sum())} row(s)); "
            f"{source} width {width}; re-embed the features with one encoder or set {fix}"
        )
    out = np.zeros((len(col), width), dtype=np.float32)
    flat = pc.list_flatten(col.filter(pa.array(valid))).to_numpy(zero_copy_only=False)
    out[valid] = flat.astype(np.float32, copy=False).reshape(-1, width)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise DatasetError(
            f"{path}: column {name!r} has NaN or infinite values at post_id {post_id[row]!r} ({int((~finite).sum())} row(s)); re-embed those posts"
        )
    return out, valid


def _presence(
    table: pa.Table, name: str, emb_name: str, emb_valid: np.ndarray, path: Path, post_id: np.ndarray
) -> np.ndarray:
    """has_text / has_image: the column where given (null: whether there is an embedding), else embedding non-null."""
    if name not in table.column_names:
        return emb_valid.copy()
    col = _column(table, name)
    if not pa.types.is_boolean(col.type):
        raise DatasetError(f"{path}: column {name!r} has type {col.type}; expected bool")
    flag = np.where(
        col.is_valid().to_numpy(zero_copy_only=False), col.fill_null(False).to_numpy(zero_copy_only=False), emb_valid
    )
    bad = flag & ~emb_valid
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{path}: {name} is true but {emb_name!r} is null at post_id {post_id[row]!r} ({int(bad.sum())} row(s)); "
            f"set {name} false for posts without that modality"
        )
    return flag.astype(bool)


def _query_rows(path: Path, train: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Indices of the query rows: the train rows marked `query`, as given."""
    rows = np.flatnonzero(train & query)
    if len(rows) == 0:
        raise DatasetError(
            f"{path}: no train row has {schema.QUERY!r} true, so the meta query set is empty; mark about 10% of the "
            "train split as query rows (they need t_label and v_label; `ctmwa-train prepare` does), or train with "
            "--mode late_fusion"
        )
    return rows


def _cat(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    return np.concatenate([a, b]) if isinstance(a, np.ndarray) else torch.cat([a, b])
