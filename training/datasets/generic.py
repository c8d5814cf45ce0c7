"""Any labelled image-text set as a table: CSV, TSV, JSONL or Parquet (a file, or a folder of Parquet parts).

Columns (names configurable): an id, a text (string, or bytes decoded like the MVSA text files), an image (bytes,
or a path relative to `image_root`), a label, and optionally a text label and an image label. Labels are words or
class indices; class names are given, or inferred: sorted words, or sorted numbers as their decimal strings.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds

from ctmwa_batch.errors import DatasetError
from ctmwa_training.datasets.common import (
    DROP_MISSING_LABEL,
    PostsRead,
    PostsSource,
    RawPost,
    ReadOptions,
    ReadReport,
    build_posts,
    read_all,
)

logger = logging.getLogger(__name__)

FORMATS = ("csv", "tsv", "jsonl", "parquet")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}
_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class GenericConfig:
    """Where a generic table keeps each field, and its class names."""

    # csv | tsv | jsonl | parquet; None: from the file extension (a folder is read as Parquet parts).
    format: str | None = None
    # Post id column (any type; ids are kept as strings).
    id_column: str = "post_id"
    # Text column; None: the set has no texts (image-only posts).
    text_column: str | None = "text"
    # Image column: binary holds image bytes, string holds a path (relative to image_root); None: no images.
    image_column: str | None = "image"
    # Folder image paths are relative to; None: the folder of the data file.
    image_root: str | None = None
    # Multimodal label column (words or class indices).
    label_column: str = "label"
    # Text / image label columns; None: use `t_label` / `v_label` when the table has them (both or neither).
    t_label_column: str | None = None
    v_label_column: str | None = None
    # Class names in class order; None: inferred from the labels (sorted words, or sorted numbers).
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, not {self.format!r}")


def read_generic(
    path: str | Path, config: GenericConfig = GenericConfig(), options: ReadOptions = ReadOptions()
) -> PostsRead:
    """Read a generic labelled table into a posts table and a report."""
    return read_all(generic_source(path, config, options))


def generic_source(
    path: str | Path,
    config: GenericConfig = GenericConfig(),
    options: ReadOptions = ReadOptions(),
    progress: Callable[[ReadReport], None] | None = None,
) -> PostsSource:
    """Check columns and labels now (errors surface before any image is read); read content lazily."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} not found; give --root the CSV, TSV, JSONL or Parquet file of the labelled set")
    fmt = config.format or ("parquet" if path.is_dir() else _EXTENSIONS.get(path.suffix.lower()))
    if fmt is None:
        raise DatasetError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; set --format to one of {FORMATS}"
        )
    dataset = _open(path, fmt, config)
    names = dataset.schema.names

    def need(column: str, flag: str) -> str:
        if column not in names:
            raise DatasetError(f"{path}: column {column!r} not found; columns are {names}; set {flag}")
        return column

    id_col = need(config.id_column, "--id-column")
    label_col = need(config.label_column, "--label-column")
    text_col = need(config.text_column, "--text-column") if config.text_column else None
    image_col = need(config.image_column, "--image-column") if config.image_column else None
    if text_col is None and image_col is None:
        raise DatasetError(
            f"{path}: neither a text nor an image column configured; set --text-column or --image-column"
        )
    t_col = (
        need(config.t_label_column, "--t-label-column")
        if config.t_label_column
        else ("t_label" if "t_label" in names else None)
    )
    v_col = (
        need(config.v_label_column, "--v-label-column")
        if config.v_label_column
        else ("v_label" if "v_label" in names else None)
    )
    if (t_col is None) != (v_col is None):
        raise DatasetError(
            f"{path}: a text label column without an image label column (or the reverse): {t_col=}, {v_col=}; "
            "give both --t-label-column and --v-label-column, or neither"
        )
    if image_col is not None:
        image_type = dataset.schema.field(image_col).type
        if not (
            pa.types.is_binary(image_type)
            or pa.types.is_large_binary(image_type)
            or pa.types.is_string(image_type)
            or pa.types.is_large_string(image_type)
        ):
            raise DatasetError(
                f"{path}: image column {image_col!r} has type {image_type}; "
                "it must hold bytes (binary) or paths (string)"
            )

    label_cols = [c for c in (label_col, t_col, v_col) if c is not None]
    label_table = dataset.to_table(columns=[id_col, *label_cols])
    values = {
        c: [_label_value(v, path, row, c) for row, v in enumerate(label_table.column(c).to_pylist(), start=1)]
        for c in label_cols
    }
    class_names, index_of = _class_names(values, config.labels, path)
    ids = ["" if v is None else str(v) for v in label_table.column(id_col).to_pylist()]
    _check_ids(ids, path, id_col)
    has_unimodal = t_col is not None and any(
        t is not None and v is not None for t, v in zip(values[t_col], values[v_col], strict=True)
    )
    report = ReadReport(dataset="generic", source=str(path), labels=list(class_names), unimodal_labels=has_unimodal)
    labels = [index_of(v, path, row, label_col) for row, v in enumerate(values[label_col], start=1)]
    t_labels = [index_of(v, path, row, t_col) for row, v in enumerate(values[t_col], start=1)] if t_col else None
    v_labels = [index_of(v, path, row, v_col) for row, v in enumerate(values[v_col], start=1)] if v_col else None
    if t_col and not has_unimodal:
        logger.warning(
            "%s: columns %r and %r hold no label pair; treating the set as without unimodal labels", path, t_col, v_col
        )
    image_root = Path(config.image_root) if config.image_root else (path if path.is_dir() else path.parent)
    content_cols = [c for c in (text_col, image_col) if c is not None]

    def posts() -> Iterator[RawPost]:
        row = 0
        for batch in dataset.to_batches(columns=[id_col, *content_cols], batch_size=options.batch_rows):
            batch_ids = batch.column(id_col).to_pylist()
            texts = batch.column(text_col).to_pylist() if text_col else None
            images = batch.column(image_col).to_pylist() if image_col else None
            for i in range(batch.num_rows):
                post_id, label = ids[row], labels[row]
                # The label pass and this pass scan the table separately; their row order must agree.
                assert str(batch_ids[i]) == post_id, f"row order changed between scans at row {row + 1}"
                row += 1
                report.read += 1
                if label is None:
                    report.drop(DROP_MISSING_LABEL, post_id)
                    continue
                image = images[i] if images is not None else None
                image_path = None
                if isinstance(image, str):
                    image, image_path = None, (image_root / image if image.strip() else None)
                yield RawPost(
                    post_id=post_id,
                    label=label,
                    t_label=t_labels[row - 1] if t_labels is not None and has_unimodal else None,
                    v_label=v_labels[row - 1] if v_labels is not None and has_unimodal else None,
                    text=texts[i] if texts is not None else None,
                    image=image,
                    image_path=image_path,
                )

    logger.info("%s: %d rows, classes %s, unimodal labels: %s", path, len(ids), class_names, has_unimodal)
    return PostsSource(report, build_posts(posts(), report, options, progress))


def _open(path: Path, fmt: str, config: GenericConfig) -> ds.Dataset:
    try:
        if fmt in ("csv", "tsv"):
            # Ids and labels as strings (leading zeros survive); texts as bytes so bad UTF-8 is decoded and counted.
            types = {config.id_column: pa.string(), config.label_column: pa.string()}
            for column in (config.t_label_column or "t_label", config.v_label_column or "v_label"):
                types[column] = pa.string()
            if config.text_column:
                types[config.text_column] = pa.binary()
            if config.image_column:
                types[config.image_column] = pa.string()
            file_format = ds.CsvFileFormat(
                parse_options=pa_csv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True),
                convert_options=pa_csv.ConvertOptions(column_types=types, strings_can_be_null=True),
            )
            return ds.dataset(path, format=file_format)
        return ds.dataset(path, format="json" if fmt == "jsonl" else "parquet")
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"{path}: cannot read as {fmt}: {e}; check the file or set --format") from e


def _label_value(value: object, path: Path, row: int, column: str) -> int | str | None:
    """A label cell as a class index (int), a word (str) or None (empty)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise DatasetError(f"{path}: row {row}, column {column!r}: boolean label {value!r}; use words or class indices")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise DatasetError(f"{path}: row {row}, column {column!r}: label {value!r} is not a class index or a word")
    text = str(value).strip()
    if not text:
        return None
    return int(text) if _INT.fullmatch(text) else text


def _class_names(values: dict[str, list], given: tuple[str, ...] | None, path: Path):
    """Class names, and a function mapping a label value (row, column for errors) to its class index."""
    present = {v for column in values.values() for v in column if v is not None}
    kinds = {type(v) for v in present}
    if len(kinds) > 1:
        raise DatasetError(
            f"{path}: labels mix class indices and words (e.g. {sorted(map(str, present))[:6]}); use one or the other"
        )
    if given is not None:
        names = list(given)
        by_word = {name.lower(): i for i, name in enumerate(names)}
    elif kinds == {int}:
        numbers = sorted(present)
        names = [str(n) for n in numbers]
        by_word = {}
        by_number = {n: i for i, n in enumerate(numbers)}
    else:
        names = sorted(present)
        by_word = {name.lower(): i for i, name in enumerate(names)}
    if not names:
        raise DatasetError(f"{path}: no labels found; set --label-column to the column that holds them")

    def index_of(value: int | str | None, path: Path, row: int, column: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, str):
            index = by_word.get(value.lower())
        elif given is None:
            index = by_number[value]
        else:
            index = value if 0 <= value < len(names) else None
        if index is None:
            raise DatasetError(
                f"{path}: row {row}, column {column!r}: unknown label {value!r}; the classes are {names} "
                f"(by name, or by index 0..{len(names) - 1}); fix the row or the --labels list"
            )
        return index

    return names, index_of


def _check_ids(ids: list[str], path: Path, column: str) -> None:
    row_of: dict[str, int] = {}
    for row, post_id in enumerate(ids, start=1):
        if not post_id:
            raise DatasetError(f"{path}: row {row} has an empty id in column {column!r}; every post needs an id")
        if post_id in row_of:
            raise DatasetError(
                f"{path}: row {row}: duplicate id {post_id!r} in column {column!r} (first in row {row_of[post_id]}); "
                "remove one of the two rows"
            )
        row_of[post_id] = row
