"""Input checks of a scoring job: every file's columns against the config, once, from the footers planning read.

The plan records what the shards need (`InputColumns`: the id and passthrough fields, whether images are paths), so
a shard task reads no footer before its real read; `check_unchanged` only looks at file sizes.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from ctmwa_batch import schema
from ctmwa_batch.config import ScoreConfig
from ctmwa_batch.errors import CtmwaError, InputSchemaError
from ctmwa_batch.io import storage
from ctmwa_batch.io.partitions import InputFile, PartitionPlan, Shard
from ctmwa_batch.model.posts import check_posts_schema


class PlanMismatch(CtmwaError):
    """A shard task got a plan made for another model, another config's columns, or an input changed since."""


def _id_family(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "integer"
    text = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    return "text" if text else "bytes"


@dataclass(frozen=True)
class InputColumns:
    """What scoring needs of a partition's columns, checked at plan time: the output takes these fields' types."""

    id_field: pa.Field  # the id column of the first file (the output's id type)
    passthrough_fields: tuple[pa.Field, ...]  # the passthrough columns of the first file, in config order
    image_paths: bool  # the image column holds paths/URIs (else bytes, or there is none)
    text_column: str | None  # the config's text and image columns the check was made for
    image_column: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the plan (the fields travel as a serialized Arrow schema, base64)."""
        fields = pa.schema([self.id_field, *self.passthrough_fields])
        return {
            "fields": base64.b64encode(fields.serialize().to_pybytes()).decode("ascii"),
            "image_paths": self.image_paths,
            "text_column": self.text_column,
            "image_column": self.image_column,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputColumns:
        """Inverse of to_dict."""
        fields = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(d["fields"])))
        return cls(fields.field(0), tuple(fields)[1:], bool(d["image_paths"]), d["text_column"], d["image_column"])

    def require_config(self, config: ScoreConfig) -> None:
        """PlanMismatch when `config` names other columns than the ones this was checked for."""
        planned = (
            self.id_field.name,
            self.text_column,
            self.image_column,
            tuple(f.name for f in self.passthrough_fields),
        )
        given = (config.id_column, config.text_column, config.image_column, tuple(config.passthrough))
        if planned != given:
            raise PlanMismatch(
                f"the plan checked the columns (id, text, image, passthrough) {planned} but this config names {given}; "
                "plan the partition again with this config"
            )


def check_input(files: Sequence[InputFile], config: ScoreConfig, input_path: str) -> InputColumns:
    """Check the columns of every file (schemas from the listing's footers) before any output. The output takes its
    id and passthrough types from the first file; the others must agree on the id's kind and the image column's."""
    first = files[0].schema
    assert first is not None, "check_input needs a listing with schemas (partitions.list_input)"
    image_paths = None
    for f in files:
        where = f"input file {f.path!r}"
        assert f.schema is not None, "check_input needs a listing with schemas (partitions.list_input)"
        is_paths = check_posts_schema(f.schema, config, where)
        schema.require_columns(f.schema, {c: "--passthrough" for c in config.passthrough}, where)
        want, got = first.field(config.id_column).type, f.schema.field(config.id_column).type
        if _id_family(want) != _id_family(got):
            raise InputSchemaError(
                f"id column {config.id_column!r} is {got} in {where} but {want} in {files[0].path!r}; the files of a "
                "partition need one id type: rewrite the odd file, or set --id-column to a column that agrees"
            )
        if image_paths is not None and is_paths != image_paths:
            raise InputSchemaError(
                f"image column {config.image_column!r} holds paths in some files of {input_path!r} and bytes in "
                "others; use one kind per partition (set --image-column)"
            )
        image_paths = is_paths
    return InputColumns(
        id_field=first.field(config.id_column),
        passthrough_fields=tuple(first.field(c) for c in config.passthrough),
        image_paths=bool(image_paths),
        text_column=config.text_column,
        image_column=config.image_column,
    )


def planned_columns(plan: PartitionPlan, config: ScoreConfig) -> InputColumns:
    """The columns a plan recorded, checked against the config a shard task scores with."""
    if plan.columns is None:
        raise PlanMismatch(
            f"the plan of {plan.partition} records no input columns (an older plan?); plan the partition again"
        )
    columns = InputColumns.from_dict(plan.columns)
    columns.require_config(config)
    return columns


def check_unchanged(plan: PartitionPlan, shard: Shard) -> None:
    """Fail when a file of the shard changed size since planning (the row-group ranges would be wrong)."""
    fs, _ = storage.open_filesystem(plan.input_path)
    sizes = {f["path"]: f["size"] for f in plan.fingerprint["files"]}
    for piece in shard.pieces:
        info = fs.get_file_info(piece.path)
        if info.type != pafs.FileType.File or info.size != sizes[piece.path]:
            raise PlanMismatch(
                f"input file {piece.path!r} changed since the partition was planned (size {info.size}, planned "
                f"{sizes[piece.path]}); plan the partition again"
            )
