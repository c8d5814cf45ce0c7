"""Committed scores partitions with distributions chosen by the test (the health report's fixtures, and its bench).

The rows follow the scores schema (ctmwa_batch.schema.scores_schema) and the partitions are committed through the real
protocol (partitions.part_writer, then partitions.commit writing _SUCCESS.json), so the report reads exactly what a
scoring run leaves; only the values are drawn here instead of by a model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ctmwa_batch.io import partitions
from ctmwa_batch.schema import STATUSES, prob_column, scores_schema

LABELS = ("positive", "neutral", "negative")


@dataclass(frozen=True)
class Mix:
    """How a synthetic day's rows are drawn."""

    sentiment: tuple[float, ...] = (0.4, 0.3, 0.3)  # shares of LABELS among scored rows
    status: tuple[float, ...] = (0.9, 0.04, 0.05, 0.01, 0.0)  # shares of STATUSES
    unreadable: float = 0.2  # share of image_missing rows whose image was present but undecodable
    confidence: tuple[float, float] = (5.0, 2.0)  # beta(a, b) mapped onto [1/3, 1]
    text_weight: tuple[float, float] = (2.0, 5.0)  # beta(a, b)
    image_weight: tuple[float, float] = (5.0, 2.0)
    evidence: bool = False  # add text_evidence / image_evidence columns


def draw_scores(n: int, seed: int, mix: Mix = Mix(), date: str = "2026-01-01") -> pa.Table:
    """n score rows drawn from `mix` (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    status = rng.choice(len(STATUSES), size=n, p=np.asarray(mix.status) / sum(mix.status))
    names = np.asarray(STATUSES, dtype=object)[status]
    scored = np.isin(names, ("ok", "text_missing", "image_missing"))
    has_text = ~np.isin(names, ("text_missing", "no_content"))
    has_image = ~np.isin(names, ("image_missing", "no_content"))
    unreadable = (names == "image_missing") & (rng.random(n) < mix.unreadable)
    label = rng.choice(len(LABELS), size=n, p=np.asarray(mix.sentiment) / sum(mix.sentiment))
    confidence = (1 / 3 + 2 / 3 * rng.beta(*mix.confidence, size=n)).astype(np.float32)
    rest = ((1 - confidence) / (len(LABELS) - 1)).astype(np.float32)
    error = np.full(n, None, dtype=object)
    error[unreadable] = "image: not an image"
    error[names == "error"] = "id: null"
    ids = pa.array([None if s == "error" else f"{date}-{i:07d}" for i, s in enumerate(names)], pa.string())
    cols: dict[str, pa.Array] = {
        "post_id": ids,
        "sentiment": pa.array(np.asarray(LABELS, dtype=object)[label], pa.string(), mask=~scored),
        "confidence": pa.array(confidence, mask=~scored),
    }
    for k, lab in enumerate(LABELS):
        cols[prob_column(lab)] = pa.array(np.where(label == k, confidence, rest), mask=~scored)
    cols["text_weight"] = pa.array(rng.beta(*mix.text_weight, size=n).astype(np.float32), mask=~scored)
    cols["image_weight"] = pa.array(rng.beta(*mix.image_weight, size=n).astype(np.float32), mask=~scored)
    cols["text_sentiment"] = cols["sentiment"]
    cols["image_sentiment"] = cols["sentiment"]
    cols["has_text"] = pa.array(has_text)
    cols["has_image"] = pa.array(has_image)
    cols["status"] = pa.array(names, pa.string())
    cols["error"] = pa.array(error, pa.string())
    cols["model_version"] = pa.repeat(pa.scalar("v", pa.string()), n)
    cols["scored_at"] = pa.array(np.full(n, 0, dtype="datetime64[us]"), pa.timestamp("us", tz="UTC"))
    schema = scores_schema(list(LABELS))
    evidence = ("text_evidence", "image_evidence")
    if mix.evidence:
        cols["text_evidence"] = pa.array(rng.random(n).astype(np.float32), mask=~(scored & has_text))
        cols["image_evidence"] = pa.array(rng.random(n).astype(np.float32), mask=~(scored & has_image))
    else:  # scores written before the head graph had evidence outputs: no such columns
        schema = pa.schema([f for f in schema if f.name not in evidence])
    return pa.table([cols[f.name] for f in schema], schema=schema)


def commit_day(root: str | Path, version: str, date: str, table: pa.Table, *, row_group_size: int = 65_536) -> Path:
    """Commit `table` as the day's scores partition dt={date} of `version` through the real commit protocol."""
    n = table.num_rows
    part = partitions.Piece(path=f"synthetic/dt={date}", row_group_start=0, row_group_stop=1, num_rows=n)
    plan = partitions.PartitionPlan(
        input_path=f"synthetic/dt={date}",
        output_dir=partitions.output_dir(str(root), version, f"dt={date}"),
        partition=f"dt={date}",
        model_version=version,
        fingerprint={"files": [], "num_rows": n, "sha256": hashlib.sha256(f"{date}/{n}".encode()).hexdigest()},
        shards=(partitions.Shard(0, (part,)),),
    )
    partitions.begin(plan, overwrite=True)
    with partitions.part_writer(plan, 0, table.schema) as sink:
        sink.writer.write_table(table, row_group_size=row_group_size)

        def counts(col):
            values = pc.value_counts(table.column(col)).to_pylist()
            return {r["values"]: r["counts"] for r in values if r["values"] is not None}

        sink.stats = {
            "output_rows": n,
            "status_counts": counts("status"),
            "sentiment_counts": counts("sentiment"),
            "timings": {"score": 1.0},
        }
    partitions.commit(plan)
    return Path(plan.output_dir)


def days(start: str, count: int) -> list[str]:
    first = dt.date.fromisoformat(start)
    return [(first + dt.timedelta(days=k)).isoformat() for k in range(count)]
