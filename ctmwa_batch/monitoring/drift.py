"""The numbers of the health report: per-day statistics of committed scores, and drift against recent days.

A day is read only when committed: its `_SUCCESS.json` names the parts, and only those are opened (a partition being
rescored, or parts a killed run left, are never read). Each part is streamed in record batches of a few columns; what
stays in memory is counts and fixed 100-bin histograms, so the cost is bounded whatever the partition's size.

Drift compares a day with the pooled days of its baseline window (the `baseline_days` before it):

- the population stability index (PSI) of the sentiment mix (over the scored rows) and of each distribution
  (confidence, text_weight, image_weight, and the modality evidence columns where the scores have them), on ten bins
  cut at the baseline's deciles;
- the change of each status's share of rows, and of the share of rows whose image could not be decoded.

PSI = sum over bins of (a - e) * ln(a / e), with a and e the day's and the baseline's shares (floored at 1e-4).
Practitioners read it as: below 0.1 stable, 0.1 to 0.25 worth a look, above 0.25 shifted. Sampling alone gives a PSI
of about (bins - 1) * (1/n + 1/m) for n and m rows, hence the `min_rows` below which nothing is alerted.
This module does no plotting (ctmwa_batch.monitoring.report draws the figures).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ctmwa_batch.errors import CtmwaError, InputSchemaError
from ctmwa_batch.io.partitions import output_dir, partition_of, read_success
from ctmwa_batch.io.storage import open_filesystem
from ctmwa_batch.schema import STATUSES

logger = logging.getLogger(__name__)

HIST_BINS = 100  # fixed bins over [0, 1] for every distribution; PSI bins are merged from these
REQUIRED_COLUMNS = (
    "status",
    "sentiment",
    "confidence",
    "text_weight",
    "image_weight",
    "has_text",
    "has_image",
    "error",
)
DISTRIBUTIONS = ("confidence", "text_weight", "image_weight")
EVIDENCE = ("text_evidence", "image_evidence")  # in the scores once the head graph emits them; reported when present
PSI_FLOOR = 1e-4  # share given to an empty bin, so that ln stays finite
BATCH_ROWS = 131_072  # rows per record batch read; ten columns of it are a few MB
MAX_THREADS = 4  # days read at once (pyarrow decodes and numpy bins outside the GIL); memory is per thread, bounded


class ReportInputMissing(CtmwaError):
    """The day a report is asked for has no committed scores."""


@dataclass(frozen=True)
class Thresholds:
    """When a drift figure becomes a warning or an alert (defaults: the usual PSI reading, a few points of share)."""

    psi_warn: float = 0.1  # PSI from which a distribution is worth a look
    psi_alert: float = 0.25  # PSI from which a distribution has shifted: an alert
    rate_warn: float = 0.02  # change of a status's share of rows (absolute, 0.02 = 2 points) worth a look
    rate_alert: float = 0.05  # change of a status's share of rows that is an alert (5 points)
    min_rows: int = 200  # fewer rows (the day's or the pooled baseline's): figures shown, nothing warned or alerted
    psi_bins: int = 10  # PSI bins of a distribution, cut at the baseline's quantiles (deciles)

    def __post_init__(self) -> None:
        for name in ("psi_warn", "psi_alert", "rate_warn", "rate_alert"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise CtmwaError(f"threshold {name} = {value!r}: give a positive number")
        if self.psi_alert < self.psi_warn or self.rate_alert < self.rate_warn:
            raise CtmwaError(f"alert thresholds must not be below the warning ones: {self}")
        if self.min_rows < 0 or self.psi_bins < 2:
            raise CtmwaError(f"min_rows must be >= 0 and psi_bins >= 2, got {self.min_rows}, {self.psi_bins}")


@dataclass
class Distribution:
    """A [0, 1] column of one day: histogram over HIST_BINS equal bins, count and sum of the non-null values."""

    histogram: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, dtype=np.int64))
    count: int = 0
    total: float = 0.0
    nulls: int = 0

    def add(self, column: pa.Array | pa.ChunkedArray) -> None:
        self.nulls += column.null_count
        # bins [k/100, (k+1)/100) in float64 (the last one closed); a value a rounding error outside [0, 1] is clipped
        values = pc.drop_null(column).to_numpy(zero_copy_only=False).astype(np.float64)
        np.clip(values, 0.0, 1.0, out=values)
        hist = np.histogram(values, bins=HIST_BINS, range=(0.0, 1.0))[0]  # drops NaN, which no head output should be
        self.histogram += hist
        self.count += int(hist.sum())
        self.total += float(np.nansum(values))

    def merge(self, other: Distribution) -> None:
        self.histogram = self.histogram + other.histogram
        self.count += other.count
        self.total += other.total
        self.nulls += other.nulls

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "nulls": self.nulls,
            "mean": _round(self.mean),
            "histogram": self.histogram.tolist(),
        }


@dataclass
class DayStats:
    """What the report knows of one day's committed scores (or why the day is absent)."""

    date: str
    partition: str
    output_dir: str
    committed: bool = False
    why_missing: str | None = None  # set when not committed
    rows: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_sentiment: dict[str, int] = field(default_factory=dict)
    missing_text: int = 0  # rows with has_text false
    missing_image: int = 0  # rows with has_image false (absent or undecodable)
    unreadable_image: int = 0  # rows whose image bytes were present but could not be decoded ("image: ..." in error)
    distributions: dict[str, Distribution] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)  # class names, from the prob_<label> columns
    timings: dict[str, Any] = field(default_factory=dict)  # from _SUCCESS.json
    committed_at: str | None = None

    @property
    def scored(self) -> int:
        return sum(self.by_sentiment.values())

    def rates(self) -> dict[str, float]:
        """Share of rows per status, and of rows missing a text / an image / with an unreadable image."""
        n = self.rows or 1
        out = {f"status:{s}": self.by_status.get(s, 0) / n for s in STATUSES}
        out.update(
            missing_text=self.missing_text / n,
            missing_image=self.missing_image / n,
            unreadable_image=self.unreadable_image / n,
        )
        return out

    def merge(self, other: DayStats) -> None:
        """Pool another day into this one (baselines are pooled days)."""
        self.rows += other.rows
        for mine, theirs in ((self.by_status, other.by_status), (self.by_sentiment, other.by_sentiment)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.missing_text += other.missing_text
        self.missing_image += other.missing_image
        self.unreadable_image += other.unreadable_image
        for name, dist in other.distributions.items():
            self.distributions.setdefault(name, Distribution()).merge(dist)
        self.labels = _union(self.labels, other.labels)

    def to_dict(self) -> dict[str, Any]:
        if not self.committed:
            return {
                "date": self.date,
                "partition": self.partition,
                "output_dir": self.output_dir,
                "committed": False,
                "why_missing": self.why_missing,
            }
        timings = self.timings
        return {
            "date": self.date,
            "partition": self.partition,
            "output_dir": self.output_dir,
            "committed": True,
            "committed_at": self.committed_at,
            "rows": self.rows,
            "scored": self.scored,
            "by_status": {
                s: self.by_status.get(s, 0) for s in [*STATUSES, *sorted(set(self.by_status) - set(STATUSES))]
            },
            "by_sentiment": {k: self.by_sentiment.get(k, 0) for k in _union(self.labels, sorted(self.by_sentiment))},
            "missing_text": self.missing_text,
            "missing_image": self.missing_image,
            "unreadable_image": self.unreadable_image,
            "rates": {k: _round(v) for k, v in self.rates().items()},
            "distributions": {k: d.to_dict() for k, d in self.distributions.items()},
            "throughput": {
                "rows_per_second": timings.get("rows_per_second"),
                "rows_per_second_per_shard": timings.get("rows_per_second_per_shard"),
                "wall_seconds": timings.get("wall_seconds"),
                "shard_seconds_total": timings.get("shard_seconds_total"),
            },
        }


def _union(first: Iterable[str], second: Iterable[str]) -> list[str]:
    out = list(first)
    out += [k for k in second if k not in out]
    return out


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)


# --------------------------------------------------------------------------------------------------- reading


def collect_day(
    scores_root: str, model_version: str, date: str, partition: str, batch_rows: int = BATCH_ROWS
) -> DayStats:
    """Stream one day's committed scores into a DayStats; a day without `_SUCCESS.json` comes back not committed."""
    out_dir = output_dir(scores_root, model_version, partition)
    stats = DayStats(date=date, partition=partition, output_dir=out_dir)
    success = read_success(out_dir)
    if success is None:
        fs, path = open_filesystem(out_dir)
        stats.why_missing = (
            "no scores for this day"
            if fs.get_file_info(path).type == pafs.FileType.NotFound
            else "not committed (no _SUCCESS.json)"
        )
        return stats
    if success.get("model_version") != model_version:
        raise CtmwaError(
            f"{out_dir}/_SUCCESS.json is for model {success.get('model_version')!r}, not {model_version!r}; the scores root is inconsistent"
        )
    fs, path = open_filesystem(success.get("data_dir") or out_dir)  # a table's receipt may sit apart from its files
    for part in success["parts"]:
        part_path = f"{path}/{part}"
        try:
            f = fs.open_input_file(part_path)
        except FileNotFoundError as e:
            raise CtmwaError(
                f"{part_path} is listed in _SUCCESS.json but missing; rescore {partition} with --overwrite"
            ) from e
        with f:
            _read_part(pq.ParquetFile(f), stats, part_path, batch_rows)
    stats.committed = True
    stats.timings = dict(success.get("timings") or {})
    stats.committed_at = success.get("committed_at")
    expected = (success.get("rows") or {}).get("output")
    if expected is not None and expected != stats.rows:
        raise CtmwaError(
            f"{out_dir}: _SUCCESS.json says {expected} rows, the parts hold {stats.rows}; rescore {partition} with --overwrite"
        )
    return stats


def _read_part(pf: pq.ParquetFile, stats: DayStats, where: str, batch_rows: int) -> None:
    names = pf.schema_arrow.names
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise InputSchemaError(
            f"{where} lacks the scores column(s) {missing}; columns are {names}; is this a ctmwa-batch scores partition?"
        )
    stats.labels = _union(stats.labels, [n[len("prob_") :] for n in names if n.startswith("prob_")])
    dists = [*DISTRIBUTIONS, *(c for c in EVIDENCE if c in names)]
    for name in dists:
        stats.distributions.setdefault(name, Distribution())
    columns = [*REQUIRED_COLUMNS, *(c for c in EVIDENCE if c in names)]
    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
        stats.rows += batch.num_rows
        for key, target in (("status", stats.by_status), ("sentiment", stats.by_sentiment)):
            for item in pc.value_counts(batch.column(key)).to_pylist():
                if item["values"] is not None:
                    target[item["values"]] = target.get(item["values"], 0) + item["counts"]
        stats.missing_text += _count_true(pc.equal(batch.column("has_text"), False))
        stats.missing_image += _count_true(pc.equal(batch.column("has_image"), False))
        stats.unreadable_image += _count_true(pc.match_substring(batch.column("error"), "image:"))
        for name in dists:
            stats.distributions[name].add(batch.column(name))


def _count_true(mask: pa.Array) -> int:
    return int(pc.sum(mask.fill_null(False)).as_py() or 0)


# --------------------------------------------------------------------------------------------------- PSI


def psi(expected: np.ndarray | Sequence[float], actual: np.ndarray | Sequence[float]) -> float:
    """Population stability index of two count (or share) vectors over the same bins; 0 for equal shares."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError(f"psi needs two non-empty count vectors of one shape, got {e.shape} and {a.shape}")
    e = np.maximum(e / e.sum(), PSI_FLOOR)
    a = np.maximum(a / a.sum(), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def quantile_edges(baseline_hist: np.ndarray, bins: int = 10) -> list[int]:
    """Fine-bin indexes that cut `baseline_hist` into at most `bins` groups of about equal baseline mass (its
    quantiles); [0, c1, ..., HIST_BINS]. A baseline concentrated in a few fine bins gives fewer groups."""
    hist = np.asarray(baseline_hist, dtype=np.float64)
    cum = np.cumsum(hist) / hist.sum()
    cuts = {int(np.searchsorted(cum, k / bins - 1e-12, side="left")) + 1 for k in range(1, bins)}
    return [0, *sorted(c for c in cuts if 0 < c < hist.size), hist.size]


def grouped(hist: np.ndarray, edges: list[int]) -> np.ndarray:
    """A fine histogram summed over the groups `quantile_edges` made."""
    return np.add.reduceat(np.asarray(hist), edges[:-1])


def distribution_psi(baseline: Distribution, day: Distribution, bins: int = 10) -> tuple[float, list[int]]:
    """PSI of a day's distribution against the baseline's, on the baseline's quantile bins (and those bins)."""
    edges = quantile_edges(baseline.histogram, bins)
    return psi(grouped(baseline.histogram, edges), grouped(day.histogram, edges)), edges


# --------------------------------------------------------------------------------------------------- comparing


def pool(days: list[DayStats], date: str = "baseline") -> DayStats:
    """The committed days summed into one (an empty pool when none is committed)."""
    out = DayStats(date=date, partition="", output_dir="", committed=bool(days))
    for d in days:
        if d.committed:
            out.merge(d)
    return out


def _level(value: float, warn: float, alert: float) -> str | None:
    return "alert" if value >= alert else "warn" if value >= warn else None


@dataclass
class _Comparison:
    """One day against its baseline: the report's figures, and the warnings and alerts they raise."""

    day: DayStats
    baseline: DayStats
    thresholds: Thresholds
    span: str
    alerting: bool
    out: dict[str, Any]

    def flag(self, name: str, value: float, warn: float, alert: float, message: str, points: bool = False) -> None:
        """Level a figure against its thresholds; a level is reported only when both sides have enough rows."""
        level = _level(abs(value), warn, alert)
        self.out["quantities"][name]["level"] = level
        if level and self.alerting:
            threshold = alert if level == "alert" else warn
            at = f"±{threshold * 100:g} points" if points else f"{threshold:g}"
            self.out["alerts" if level == "alert" else "warnings"].append(
                {
                    "date": self.day.date,
                    "quantity": name,
                    "value": _round(value, 4),
                    "threshold": threshold,
                    "level": level,
                    "message": f"{self.day.date}: {message} ({level} at {at})",
                }
            )

    def sentiment_mix(self) -> None:
        """PSI of the predicted classes' shares."""
        day, baseline, t = self.day, self.baseline, self.thresholds
        if not (baseline.scored and day.scored):
            return
        labels = _union(baseline.labels, day.labels)
        e = [baseline.by_sentiment.get(k, 0) for k in labels]
        a = [day.by_sentiment.get(k, 0) for k in labels]
        value = psi(e, a)
        shares = {k: (_round(ai / sum(a), 4), _round(ei / sum(e), 4)) for k, ai, ei in zip(labels, a, e)}
        self.out["quantities"]["sentiment_mix"] = {
            "kind": "psi",
            "value": _round(value, 4),
            "day": {k: s[0] for k, s in shares.items()},
            "baseline": {k: s[1] for k, s in shares.items()},
        }
        moved = ", ".join(f"{k} {s[0]:.0%} (was {s[1]:.0%})" for k, s in shares.items())
        message = f"sentiment mix PSI {value:.3f} against {self.span}: {moved}"
        self.flag("sentiment_mix", value, t.psi_warn, t.psi_alert, message)

    def distributions(self) -> None:
        """PSI of each recorded distribution (confidence, weights, evidence) over shared bins."""
        t = self.thresholds
        for name, dist in self.day.distributions.items():
            base = self.baseline.distributions.get(name)
            if base is None or not base.count or not dist.count:
                continue
            value, edges = distribution_psi(base, dist, t.psi_bins)
            self.out["quantities"][name] = {
                "kind": "psi",
                "value": _round(value, 4),
                "bins": len(edges) - 1,
                "mean": _round(dist.mean, 4),
                "baseline_mean": _round(base.mean, 4),
            }
            message = (
                f"{name} distribution PSI {value:.3f} against {self.span} (mean {dist.mean:.3f}, was {base.mean:.3f})"
            )
            self.flag(name, value, t.psi_warn, t.psi_alert, message)

    def rates(self) -> None:
        """Changes of the status shares and of the undecodable-image share, in points."""
        t = self.thresholds
        day_rates, base_rates = self.day.rates(), self.baseline.rates()
        for name, rate in day_rates.items():
            was = base_rates[name]
            change = rate - was
            self.out["quantities"][name] = {
                "kind": "rate",
                "value": _round(change, 4),
                "day": _round(rate, 4),
                "baseline": _round(was, 4),
            }
            if not (name.startswith("status:") or name == "unreadable_image"):
                continue
            what = (
                f"share of rows with status {name[7:]}"
                if name.startswith("status:")
                else "share of rows with an undecodable image"
            )
            moved = "rose" if change >= 0 else "fell"
            message = f"{what} {moved} to {rate:.1%} from {was:.1%} over {self.span} ({change * 100:+.1f} points)"
            self.flag(name, change, t.rate_warn, t.rate_alert, message, points=True)


def compare(
    day: DayStats, baseline: DayStats, baseline_dates: list[str], thresholds: Thresholds = Thresholds()
) -> dict[str, Any]:
    """Drift of one day against its pooled baseline: figures per quantity, and the warnings and alerts they raise."""
    out: dict[str, Any] = {
        "date": day.date,
        "baseline_dates": baseline_dates,
        "rows": day.rows,
        "baseline_rows": baseline.rows,
        "quantities": {},
        "alerts": [],
        "warnings": [],
        "notes": [],
    }
    if not baseline.rows:
        out["notes"].append(f"{day.date}: no committed baseline day, drift not computed")
        return out
    alerting = day.rows >= thresholds.min_rows and baseline.rows >= thresholds.min_rows
    if not alerting:
        out["notes"].append(
            f"{day.date}: {day.rows} rows against {baseline.rows} baseline rows, fewer than min_rows {thresholds.min_rows}: "
            "drift figures shown, nothing warned or alerted (sampling noise alone moves PSI at this size)"
        )
    span = (
        f"the {len(baseline_dates)}-day baseline ({baseline_dates[0]}..{baseline_dates[-1]})"
        if len(baseline_dates) > 1
        else f"the baseline day {baseline_dates[0]}"
    )
    comparison = _Comparison(day, baseline, thresholds, span, alerting, out)
    comparison.sentiment_mix()
    comparison.distributions()
    comparison.rates()
    return out


# --------------------------------------------------------------------------------------------------- the report's numbers


def days_before(date: str, n: int) -> list[str]:
    """The n days before `date`, oldest first."""
    d = dt.date.fromisoformat(date)
    return [(d - dt.timedelta(days=k)).isoformat() for k in range(n, 0, -1)]


def day_range(start: str, end: str) -> list[str]:
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    if last < first:
        raise CtmwaError(f"end date {end} is before {start}; swap them")
    return [(first + dt.timedelta(days=k)).isoformat() for k in range((last - first).days + 1)]


def partition_for(date: str, template: str = "dt={date}") -> str:
    """The scores partition of a day: the partition the scorer mirrors from the input path the template gives."""
    return partition_of(template.format(date=date))


def build(
    scores_root: str,
    model_version: str,
    date: str,
    end_date: str | None = None,
    baseline_days: int = 7,
    thresholds: Thresholds = Thresholds(),
    partition_template: str = "dt={date}",
    batch_rows: int = BATCH_ROWS,
) -> dict[str, Any]:
    """Every number of the report on `date` (or the range date..end_date): per-day statistics of the report days and
    their baseline windows (each day read once), each report day's drift against its own window, alerts, notes."""
    try:
        report_dates = day_range(
            dt.date.fromisoformat(date).isoformat(), dt.date.fromisoformat(end_date or date).isoformat()
        )
    except ValueError as e:
        raise CtmwaError(f"date {date!r} / end date {end_date!r}: give YYYY-MM-DD") from e
    if baseline_days < 0:
        raise CtmwaError(f"baseline_days = {baseline_days}: give 0 or more")
    window = days_before(report_dates[0], baseline_days)
    wanted = [*window, *report_dates]
    with ThreadPoolExecutor(max_workers=max(1, min(len(wanted), os.cpu_count() or 1, MAX_THREADS))) as executor:
        collected = executor.map(
            lambda d: collect_day(scores_root, model_version, d, partition_for(d, partition_template), batch_rows),
            wanted,
        )
        stats: dict[str, DayStats] = dict(zip(wanted, collected))
    for d, s in stats.items():
        logger.info("%s: %s", d, f"{s.rows} rows" if s.committed else s.why_missing)
    missing_report = [d for d in report_dates if not stats[d].committed]
    if len(missing_report) == len(report_dates):
        s = stats[report_dates[0]]
        raise ReportInputMissing(
            f"no committed scores for {report_dates[0]}{'..' + report_dates[-1] if len(report_dates) > 1 else ''} of model {model_version} "
            f"(looked at {s.output_dir}: {s.why_missing}); score and commit the day first, or check --scores / --model-version / --partition-template"
        )
    notes = []
    missing_window = [d for d in window if not stats[d].committed]
    if missing_window:
        notes.append(
            f"{len(missing_window)} of {len(window)} baseline day(s) have no committed scores and are left out of the baseline: {', '.join(missing_window)}"
        )
    if missing_report:
        notes.append(f"{len(missing_report)} report day(s) have no committed scores: {', '.join(missing_report)}")
    drift = {}
    for d in report_dates:
        if not stats[d].committed:
            continue
        dates = [b for b in days_before(d, baseline_days) if stats[b].committed]
        drift[d] = compare(stats[d], pool([stats[b] for b in dates]), dates, thresholds)
        notes += drift[d].pop("notes")
    labels: list[str] = []
    for s in stats.values():
        labels = _union(labels, s.labels)
    present = [d for d in window if stats[d].committed]
    return {
        "format": 1,
        "model_version": model_version,
        "scores_root": scores_root,
        "date": report_dates[0],
        "end_date": report_dates[-1],
        "report_dates": report_dates,
        "baseline": {"days": baseline_days, "window": window, "present": present, "missing": missing_window},
        "labels": labels,
        "thresholds": dataclasses.asdict(thresholds),
        "histogram": {"bins": HIST_BINS, "range": [0.0, 1.0]},
        "days": [
            {**stats[d].to_dict(), "role": "report" if d in report_dates else "baseline"}
            for d in [*window, *report_dates]
        ],
        "drift": drift,
        "alerts": [a for d in drift.values() for a in d["alerts"]],
        "warnings": [w for d in drift.values() for w in d["warnings"]],
        "notes": notes,
    }
