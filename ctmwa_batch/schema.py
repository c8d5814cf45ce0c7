"""The one place that knows the Arrow schemas: posts (scoring input; labelled for training), features, scores.

DESIGN.md section 5 is the contract; writers take their schema from here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa

from ctmwa_batch.errors import InputSchemaError

# Features Parquet (training input).
POST_ID = "post_id"
SPLIT = "split"
TEXT_EMB = "text_emb"
IMAGE_EMB = "image_emb"
LABEL = "label"
T_LABEL = "t_label"
V_LABEL = "v_label"
QUERY = "query"
HAS_TEXT = "has_text"
HAS_IMAGE = "has_image"
IMAGE_ERROR = "image_error"  # embed output: why present image bytes were unusable (null when fine or absent)
SPLITS = ("train", "valid", "test")

EMBEDDING_TYPE = pa.list_(pa.float32())
# Kept embeddings (ctmwa_batch.scoring.embeddings): float16, a list (pyarrow 25 cannot read back a Parquet
# fixed_size_list column with nulls); ROW is the row's position in its posts partition (the plan's listing order).
KEPT_EMBEDDING_TYPE = pa.list_(pa.float16())
ROW = "row"

FEATURES_FIELDS = [
    pa.field(POST_ID, pa.string(), nullable=False),
    pa.field(SPLIT, pa.string(), nullable=False),
    pa.field(TEXT_EMB, EMBEDDING_TYPE),
    pa.field(IMAGE_EMB, EMBEDDING_TYPE),
    pa.field(LABEL, pa.int64(), nullable=False),
    pa.field(T_LABEL, pa.int64()),
    pa.field(V_LABEL, pa.int64()),
    pa.field(QUERY, pa.bool_(), nullable=False),
    pa.field(HAS_TEXT, pa.bool_()),
    pa.field(HAS_IMAGE, pa.bool_()),
]
FEATURES_SCHEMA = pa.schema(FEATURES_FIELDS)
FEATURES_REQUIRED = (POST_ID, SPLIT, TEXT_EMB, IMAGE_EMB, LABEL, T_LABEL, V_LABEL, QUERY)

# Schema metadata of posts and features files made for training.
LABELS_KEY = "ctmwa.labels"  # JSON list of class names, in label-index order
UNIMODAL_KEY = "ctmwa.unimodal_labels"  # "true" / "false": whether t_label / v_label exist (TumEmo: false)
DATASET_KEY = "ctmwa.dataset"  # which reader made the posts (mvsa-single, tumemo, ...)

# Columns `ctmwa-batch embed` adds to the posts it reads (the other columns pass through).
EMBED_FIELDS = [
    pa.field(TEXT_EMB, EMBEDDING_TYPE),
    pa.field(IMAGE_EMB, EMBEDDING_TYPE),
    pa.field(HAS_TEXT, pa.bool_(), nullable=False),
    pa.field(HAS_IMAGE, pa.bool_(), nullable=False),
    pa.field(IMAGE_ERROR, pa.string()),
]

# Posts Parquet (scoring input): default column names, all configurable.
from ctmwa_batch.config import DEFAULT_ID_COLUMN, DEFAULT_IMAGE_COLUMN, DEFAULT_TEXT_COLUMN  # noqa: E402, F401 - defined once there

# Arrow types a posts column may have (checked by ctmwa_batch.model.posts before any output). The image column holds
# bytes, or a path / URI as a string.
TEXT_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view, pa.types.is_null)
BYTES_TYPES = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view, pa.types.is_fixed_size_binary)
PATH_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
ID_TYPES = (*PATH_TYPES, pa.types.is_integer, *BYTES_TYPES)

# The posts table in its default layout. A feed may carry a null id: scoring keeps that row (status "error").
POSTS_SCHEMA = pa.schema(
    [
        pa.field(DEFAULT_ID_COLUMN, pa.string()),
        pa.field(DEFAULT_TEXT_COLUMN, pa.string()),
        pa.field(DEFAULT_IMAGE_COLUMN, pa.binary()),
    ]
)
# Labelled posts (a dataset reader's output): every post has an id; class indices in `ctmwa.labels` order.
LABELLED_POSTS_SCHEMA = pa.schema(
    [
        POSTS_SCHEMA.field(DEFAULT_ID_COLUMN).with_nullable(False),
        *POSTS_SCHEMA.remove(0),
        pa.field(LABEL, pa.int64(), nullable=False),
        pa.field(T_LABEL, pa.int64()),
        pa.field(V_LABEL, pa.int64()),
    ]
)
# Training posts (`ctmwa-train prepare` writes them; a release embeds and trains on them): labelled posts, their
# split, and whether each is in the meta query set. The query set is decided here, once: training reads it as given.
TRAINING_POSTS_SCHEMA = pa.schema(
    [*LABELLED_POSTS_SCHEMA, pa.field(SPLIT, pa.string(), nullable=False), pa.field(QUERY, pa.bool_(), nullable=False)]
)

# Scores Parquet (output).
STATUS_OK = "ok"
STATUS_TEXT_MISSING = "text_missing"
STATUS_IMAGE_MISSING = "image_missing"
STATUS_NO_CONTENT = "no_content"
STATUS_ERROR = "error"
STATUSES = (STATUS_OK, STATUS_TEXT_MISSING, STATUS_IMAGE_MISSING, STATUS_NO_CONTENT, STATUS_ERROR)


def prob_column(label: str) -> str:
    """Name of the probability column of one class."""
    return f"prob_{label}"


def scores_schema(
    labels: list[str], id_field: pa.Field | None = None, passthrough: Sequence[pa.Field] = ()
) -> pa.Schema:
    """Arrow schema of the scores for a model with these class labels, the input's id field and any passthrough
    fields after the scores (known at plan time, without the model's sessions)."""
    id_field = id_field if id_field is not None else pa.field(DEFAULT_ID_COLUMN, pa.string())
    fields = [
        id_field.with_nullable(True),
        pa.field("sentiment", pa.string()),
        pa.field("confidence", pa.float32()),
        *[pa.field(prob_column(label), pa.float32()) for label in labels],
        pa.field("text_weight", pa.float32()),
        pa.field("image_weight", pa.float32()),
        pa.field("text_evidence", pa.float32()),
        pa.field("image_evidence", pa.float32()),
        pa.field("text_sentiment", pa.string()),
        pa.field("image_sentiment", pa.string()),
        pa.field(HAS_TEXT, pa.bool_()),
        pa.field(HAS_IMAGE, pa.bool_()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("scored_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
    return pa.schema([*fields, *passthrough])


def kept_embeddings_schema(id_field: pa.Field, text_dim: int, image_dim: int) -> pa.Schema:
    """The kept embeddings' schema: id (the input's type), row, has_text, has_image, image_error, the float16 pair
    (their widths in the schema's metadata)."""
    metadata = {"ctmwa_batch.scoring.embeddings": json.dumps({TEXT_EMB: text_dim, IMAGE_EMB: image_dim})}
    fields = [
        pa.field(id_field.name, id_field.type),
        pa.field(ROW, pa.int64(), nullable=False),
        pa.field(HAS_TEXT, pa.bool_(), nullable=False),
        pa.field(HAS_IMAGE, pa.bool_(), nullable=False),
        pa.field(IMAGE_ERROR, pa.string()),
        pa.field(TEXT_EMB, KEPT_EMBEDDING_TYPE),
        pa.field(IMAGE_EMB, KEPT_EMBEDDING_TYPE),
    ]
    return pa.schema(fields, metadata=metadata)


def require_columns(schema: pa.Schema, columns: dict[str, str], where: str) -> None:
    """Fail fast when a needed column is absent; `columns` maps column name -> the CLI flag that sets it."""
    names = schema.names
    for column, flag in columns.items():
        if column not in names:
            raise InputSchemaError(
                f"column {column!r} not in {where}; columns are {names}; set {flag} to the right column name"
            )
