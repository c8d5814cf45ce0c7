"""Write the health report of committed scores: report.html (one self-contained file) and report.json.

    ctmwa-batch report --scores ROOT --model-version V --date D [--end-date E] [--baseline-days 7] [--out DIR]

The numbers come from ctmwa_batch.monitoring.drift (streamed from the committed partitions); this module draws them with
matplotlib (Agg, no display, no pyplot state) into PNGs that the HTML carries inline as base64, with inline CSS, no
script and no reference to anything outside the file, so it opens offline and survives being mailed or attached to
a ticket. matplotlib comes with the `report` extra (the Airflow image gets it through the `airflow` extra); a GPU
worker never installs it, so it is imported only when a report is drawn.

Default output: {scores}/model_version={V}/_reports/{partition}/, beside the scores and skipped by readers.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctmwa_batch.errors import CtmwaError
from ctmwa_batch.io import storage
from ctmwa_batch.io.partitions import report_dir
from ctmwa_batch.io.storage import open_filesystem
from ctmwa_batch.monitoring import drift
from ctmwa_batch.schema import STATUSES
from ctmwa_batch.settings import Settings

logger = logging.getLogger(__name__)

REPORT_EXTRA = "report"  # the pyproject extra that brings matplotlib
HTML_NAME = "report.html"
JSON_NAME = "report.json"
# Colours: one per status and a qualitative set for the sentiments (colour-blind safe, Okabe-Ito order).
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
SENTIMENT_COLOURS = {
    "positive": "#009E73",
    "neutral": "#BBBBBB",
    "negative": "#D55E00",
}  # the usual reading; other labels take PALETTE
STATUS_COLOURS = {
    "ok": "#009E73",
    "text_missing": "#56B4E9",
    "image_missing": "#E69F00",
    "no_content": "#999999",
    "error": "#D55E00",
}


class ReportDependencyMissing(CtmwaError):
    """matplotlib, which draws the report's figures, is not installed."""


def thresholds_from(settings: Settings) -> drift.Thresholds:
    """The drift thresholds of the deployment settings (CTMWA_DRIFT_*)."""
    return drift.Thresholds(
        psi_warn=settings.drift_psi_warn,
        psi_alert=settings.drift_psi_alert,
        rate_warn=settings.drift_rate_warn,
        rate_alert=settings.drift_rate_alert,
        min_rows=settings.drift_min_rows,
    )


def default_out(
    scores_root: str, model_version: str, date: str, end_date: str | None = None, partition_template: str = "dt={date}"
) -> str:
    """Where a report goes by default: `_reports/{partition}` under the model version (a range: `{partition}..{end}`)."""
    label = date if not end_date or end_date == date else f"{date}..{end_date}"
    return report_dir(scores_root, model_version, drift.partition_for(label, partition_template))


def write_report(
    scores_root: str,
    model_version: str,
    date: str,
    out_dir: str | None = None,
    *,
    end_date: str | None = None,
    baseline_days: int = 7,
    thresholds: drift.Thresholds = drift.Thresholds(),
    partition_template: str = "dt={date}",
) -> dict[str, Any]:
    """Compute and write report.html and report.json; returns the report's numbers plus `html` and `json` paths."""
    figures_module = _matplotlib()  # fail before reading anything when matplotlib is missing
    numbers = drift.build(scores_root, model_version, date, end_date, baseline_days, thresholds, partition_template)
    numbers["generated_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    out_dir = out_dir or default_out(scores_root, model_version, date, end_date, partition_template)
    figures = draw_figures(numbers, figures_module)
    fs, path = open_filesystem(out_dir)
    fs.create_dir(path, recursive=True)
    _write(fs, f"{path}/{HTML_NAME}", render_html(numbers, figures).encode())
    _write(fs, f"{path}/{JSON_NAME}", json.dumps(numbers, indent=2).encode())  # last: its presence means both are whole
    for alert in numbers["alerts"]:
        logger.warning("ALERT %s", alert["message"])
    for warning in numbers["warnings"]:
        logger.info("warning %s", warning["message"])
    logger.info(
        "report for %s written to %s (%d alert(s), %d warning(s))",
        _span(numbers),
        out_dir,
        len(numbers["alerts"]),
        len(numbers["warnings"]),
    )
    return {
        **numbers,
        "out_dir": out_dir,
        "html": storage.join(out_dir, HTML_NAME),
        "json": storage.join(out_dir, JSON_NAME),
    }


def _write(fs: Any, path: str, data: bytes) -> None:
    storage.write_object(fs, path, data)  # temp + rename on a disk, one PUT on an object store


def _span(numbers: dict[str, Any]) -> str:
    return numbers["date"] if numbers["date"] == numbers["end_date"] else f"{numbers['date']}..{numbers['end_date']}"


# --------------------------------------------------------------------------------------------------- figures


def _matplotlib() -> Any:
    """matplotlib.figure, imported here and only here; a clear error naming the extra when it is missing."""
    try:
        # The object API renders through the Agg canvas: no pyplot, no global backend switch, no display needed.
        import matplotlib.figure as figure_module
    except ImportError as e:
        raise ReportDependencyMissing(
            f"the report draws its figures with matplotlib, which is not installed ({e}); install the '{REPORT_EXTRA}' extra: "
            f"pip install 'ctmwa-batch[{REPORT_EXTRA}]' (the 'airflow' extra includes it; GPU workers do not need it)"
        ) from e
    return figure_module


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _short(date: str) -> str:
    return date[5:]  # MM-DD


def _pooled(days: list[dict[str, Any]], name: str) -> np.ndarray | None:
    hists = [
        np.asarray(d["distributions"][name]["histogram"])
        for d in days
        if d.get("committed") and name in d.get("distributions", {})
    ]
    return np.sum(hists, axis=0) if hists else None


def _density(hist: np.ndarray) -> np.ndarray:
    return hist / max(hist.sum(), 1) * hist.size  # density over [0, 1]


@dataclass(frozen=True)
class _Canvas:
    """What every figure of one report reads: the days on the x axis, their roles and the latest drift."""

    Figure: Any  # matplotlib.figure.Figure
    days: list[dict[str, Any]]
    report_days: list[dict[str, Any]]
    base_days: list[dict[str, Any]]
    labels: list[str]
    span: str
    base_label: str  # legend entry of the baseline window
    day_label: str  # legend entry of the report day(s)
    last_drift: dict[str, Any]  # the drift record of the last report day
    thresholds: dict[str, Any]

    @classmethod
    def of(cls, numbers: dict[str, Any], figure_module: Any) -> _Canvas:
        days = numbers["days"]
        report_days = [d for d in days if d["role"] == "report"]
        return cls(
            Figure=figure_module.Figure,
            days=days,
            report_days=report_days,
            base_days=[d for d in days if d["role"] == "baseline"],
            labels=numbers["labels"],
            span=_span(numbers),
            base_label=f"baseline ({len(numbers['baseline']['present'])} day(s))",
            day_label="tonight" if len(report_days) == 1 else f"{len(report_days)} report days",
            last_drift=numbers["drift"].get(numbers["end_date"]) or (list(numbers["drift"].values()) or [{}])[-1],
            thresholds=numbers["thresholds"],
        )

    @property
    def x(self) -> np.ndarray:
        return np.arange(len(self.days))

    @property
    def is_report(self) -> np.ndarray:
        return np.array([d["role"] == "report" for d in self.days])

    @property
    def quantities(self) -> dict[str, Any]:
        return self.last_drift.get("quantities", {})

    def psi_of(self, name: str) -> float:
        return self.quantities.get(name, {}).get("value", float("nan"))

    def mark_days(self, ax: Any) -> None:
        """Day ticks, "missing" on uncommitted days, report days shaded."""
        dates = [d["date"] for d in self.days]
        ax.set_xticks(self.x, [_short(d) for d in dates], rotation=0 if len(dates) <= 10 else 60, fontsize=8)
        for i, d in enumerate(self.days):
            if not d.get("committed"):
                ax.text(
                    i,
                    0.5,
                    "missing",
                    rotation=90,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="#888888",
                    transform=ax.get_xaxis_transform(),
                )
            if d["role"] == "report":
                ax.axvspan(i - 0.5, i + 0.5, color="#fff3c4", zorder=0)

    def histograms(self, ax: Any, name: str, colour: str) -> None:
        """The pooled histogram of `name`: baseline filled, report day(s) as a step line."""
        centres = (np.arange(drift.HIST_BINS) + 0.5) / drift.HIST_BINS
        base, now = _pooled(self.base_days, name), _pooled(self.report_days, name)
        if base is not None and base.sum():
            ax.fill_between(centres, _density(base), step="mid", color="#999999", alpha=0.5, label=self.base_label)
        if now is not None and now.sum():
            ax.step(centres, _density(now), where="mid", color=colour, lw=1.5, label=self.day_label)
        ax.set_xlim(0, 1)


def _figure(fig: Any, name: str, title: str, caption: str) -> dict[str, Any]:
    return {"name": name, "title": title, "caption": caption, "png": _png(fig)}


def _bars(ax: Any, items: list, warn: float, alert: float, xlabel: str, symmetric: bool) -> None:
    """Horizontal bars coloured by threshold, with the warn and alert lines (both signs when `symmetric`)."""
    if not items:
        ax.text(0.5, 0.5, "no baseline: nothing to compare", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    names, values = zip(*items)
    colours = ["#D55E00" if abs(v) >= alert else "#E69F00" if abs(v) >= warn else "#0072B2" for v in values]
    ax.barh(range(len(values)), values, color=colours)
    ax.set_yticks(range(len(values)), names, fontsize=9)
    ax.invert_yaxis()
    for s in (-1, 1) if symmetric else (1,):
        ax.axvline(s * warn, color="#E69F00", ls="--", lw=1)
        ax.axvline(s * alert, color="#D55E00", ls="--", lw=1)
    if symmetric:
        ax.axvline(0, color="black", lw=0.8)
        lim = max(alert * 1.3, max(abs(v) for v in values) * 1.1)
        ax.set_xlim(-lim, lim)
    else:
        ax.set_xlim(0, max(alert * 1.3, max(values) * 1.1))
    ax.set_xlabel(xlabel)


def _drift_figure(c: _Canvas) -> dict[str, Any]:
    """PSI per quantity and status-rate changes against the thresholds."""
    t = c.thresholds
    fig = c.Figure(figsize=(9, 3.6), layout="constrained")
    ax_psi, ax_rate = fig.subplots(1, 2, width_ratios=[1, 1])
    psis = [(k, v["value"]) for k, v in c.quantities.items() if v["kind"] == "psi"]
    rates = [
        (k.replace("status:", ""), v["value"] * 100)
        for k, v in c.quantities.items()
        if v["kind"] == "rate" and (k.startswith("status:") or k == "unreadable_image")
    ]
    _bars(ax_psi, psis, t["psi_warn"], t["psi_alert"], f"PSI (warn {t['psi_warn']:g}, alert {t['psi_alert']:g})", False)
    _bars(
        ax_rate,
        rates,
        t["rate_warn"] * 100,
        t["rate_alert"] * 100,
        f"change of share, points (warn ±{t['rate_warn'] * 100:g}, alert ±{t['rate_alert'] * 100:g})",
        True,
    )
    ax_psi.set_title("distribution drift (PSI)", fontsize=10)
    ax_rate.set_title("status rate change", fontsize=10)
    fig.suptitle(f"Drift of {c.last_drift.get('date', c.span)} against its baseline", fontsize=11)
    return _figure(
        fig,
        "drift",
        "Drift against the baseline",
        "Bars past the dashed lines warn (orange) or alert (red). PSI on the baseline's deciles; rate changes in percentage points of all rows.",
    )


def _sentiment_figure(c: _Canvas) -> dict[str, Any]:
    """The share of each predicted sentiment per day."""
    fig = c.Figure(figsize=(9, 3.6), layout="constrained")
    ax = fig.subplots()
    bottom = np.zeros(len(c.days))
    for k, label in enumerate(c.labels):
        shares = np.array(
            [
                (d.get("by_sentiment", {}).get(label, 0) / d["scored"])
                if d.get("committed") and d.get("scored")
                else 0.0
                for d in c.days
            ]
        )
        ax.bar(
            c.x,
            shares,
            bottom=bottom,
            color=SENTIMENT_COLOURS.get(label.lower(), PALETTE[k % len(PALETTE)]),
            label=label,
            width=0.7,
        )
        bottom += shares
    c.mark_days(ax)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of scored rows")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set_title(f"Sentiment mix per day (report days shaded); PSI {c.psi_of('sentiment_mix'):.3f}", fontsize=10)
    return _figure(
        fig,
        "sentiment_mix",
        "Sentiment mix per day",
        "Share of each predicted sentiment among the scored rows, baseline window and report day(s).",
    )


def _confidence_figure(c: _Canvas) -> dict[str, Any]:
    """The confidence histogram, report days against the baseline."""
    fig = c.Figure(figsize=(9, 3.4), layout="constrained")
    ax = fig.subplots()
    c.histograms(ax, "confidence", "#D55E00")
    ax.set_xlabel("confidence (probability of the predicted class)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"Confidence, {c.day_label} against the {c.base_label}; PSI {c.psi_of('confidence'):.3f}", fontsize=10)
    return _figure(
        fig,
        "confidence",
        "Confidence distribution",
        "Histogram of the confidence of scored rows (100 bins over [0, 1]).",
    )


def _rates_figure(c: _Canvas) -> dict[str, Any]:
    """Status shares and missing-modality rates per day."""
    fig = c.Figure(figsize=(9, 3.6), layout="constrained")
    ax_s, ax_m = fig.subplots(1, 2)
    bottom = np.zeros(len(c.days))
    for status in STATUSES:
        shares = np.array([d["rates"][f"status:{status}"] if d.get("committed") else 0.0 for d in c.days])
        ax_s.bar(c.x, shares, bottom=bottom, color=STATUS_COLOURS.get(status, "#000000"), label=status, width=0.7)
        bottom += shares
    c.mark_days(ax_s)
    ax_s.set_ylim(0, 1)
    ax_s.set_ylabel("share of rows")
    ax_s.set_title("status per day", fontsize=10)
    ax_s.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for key, colour, label in (
        ("missing_text", "#56B4E9", "no text"),
        ("missing_image", "#E69F00", "no image"),
        ("unreadable_image", "#D55E00", "undecodable image"),
    ):
        ys = np.array([d["rates"][key] * 100 if d.get("committed") else np.nan for d in c.days])
        ax_m.plot(c.x, ys, marker="o", color=colour, label=label)
    c.mark_days(ax_m)
    ax_m.set_ylim(bottom=0)
    ax_m.set_ylabel("% of rows")
    ax_m.set_title("missing modalities per day", fontsize=10)
    ax_m.legend(fontsize=7, frameon=False)
    return _figure(
        fig,
        "rates",
        "Status and missing-modality rates",
        "Left: share of rows per status. Right: rows without a text, without an image, and with image bytes that could not be decoded.",
    )


def _modality_figure(c: _Canvas) -> dict[str, Any]:
    """Modality weights, and the evidence where the scores carry it with values (a head without evidence outputs
    leaves the columns null)."""
    names = [
        *drift.DISTRIBUTIONS[1:],
        *(n for n in drift.EVIDENCE if (h := _pooled(c.report_days, n)) is not None and h.sum() > 0),
    ]
    fig = c.Figure(figsize=(9, 2.8 if len(names) <= 2 else 5.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots((len(names) + 1) // 2, 2)).ravel()
    for ax, name in zip(axes, names):
        c.histograms(ax, name, "#0072B2")
        ax.set_title(f"{name}; PSI {c.psi_of(name):.3f}", fontsize=10)
        ax.legend(fontsize=7, frameon=False)
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    has_evidence = any(n in names for n in drift.EVIDENCE)
    return _figure(
        fig,
        "modality",
        "Modality weights" + (" and evidence" if has_evidence else ""),
        "text_weight / image_weight (the meta-learned weight nets)"
        + (" and text_evidence / image_evidence" if has_evidence else "")
        + ", report day(s) against the baseline.",
    )


def _throughput_figure(c: _Canvas) -> dict[str, Any]:
    """Rows per second of each day's scoring."""
    fig = c.Figure(figsize=(9, 2.8), layout="constrained")
    ax = fig.subplots()
    rps = np.array(
        [
            (d.get("throughput") or {}).get("rows_per_second")
            or (d.get("throughput") or {}).get("rows_per_second_per_shard")
            or 0.0
            if d.get("committed")
            else 0.0
            for d in c.days
        ]
    )
    ax.bar(c.x, rps, color=np.where(c.is_report, "#0072B2", "#999999"), width=0.7)
    c.mark_days(ax)
    ax.set_ylabel("rows/s")
    ax.set_title("Throughput per day (first shard start to last shard end)", fontsize=10)
    return _figure(
        fig,
        "throughput",
        "Throughput per day",
        "Rows per second of each day's scoring, wall clock over all its shards.",
    )


FIGURES = (_drift_figure, _sentiment_figure, _confidence_figure, _rates_figure, _modality_figure, _throughput_figure)


def draw_figures(numbers: dict[str, Any], figure_module: Any) -> list[dict[str, Any]]:
    """The report's figures as [{"name", "title", "caption", "png" (bytes)}], in FIGURES order."""
    canvas = _Canvas.of(numbers, figure_module)
    return [draw(canvas) for draw in FIGURES]


# --------------------------------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1000px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9em}.verdict{padding:.7em 1em;border-radius:6px;margin:1em 0;font-weight:600}
.alert{background:#fde2d8;border-left:6px solid #D55E00}.warn{background:#fff1d0;border-left:6px solid #E69F00}
.ok{background:#dff3e8;border-left:6px solid #009E73}.note{background:#eef3f8;border-left:6px solid #0072B2}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}tr.report td{background:#fffbea}tr.missing td{color:#999}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.85em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(v: Any, fmt: str = "{:,}") -> str:
    return "" if v is None else fmt.format(v)


def render_html(numbers: dict[str, Any], figures: list[dict[str, Any]]) -> str:
    """The report as one HTML document: inline CSS, figures as base64 PNG data URIs, no script, no external link."""
    span = _span(numbers)
    alerts, warnings, notes = numbers["alerts"], numbers["warnings"], numbers["notes"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ctmwa-batch health report {_e(span)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Health report: {_e(span)}</h1>",
        f'<p class="meta">model version <code>{_e(numbers["model_version"])}</code> &middot; scores <code>{_e(numbers["scores_root"])}</code> &middot; '
        f"baseline: the {numbers['baseline']['days']} day(s) before, {len(numbers['baseline']['present'])} committed &middot; generated {_e(numbers.get('generated_at', ''))}</p>",
    ]
    if alerts:
        parts.append(
            f'<div class="verdict alert">{len(alerts)} alert(s)</div><ul>'
            + "".join(f"<li>{_e(a['message'])}</li>" for a in alerts)
            + "</ul>"
        )
    elif warnings:
        parts.append('<div class="verdict warn">No alert; worth a look:</div>')
    else:
        parts.append('<div class="verdict ok">Normal: no alert, no warning.</div>')
    if warnings:
        parts.append("<ul>" + "".join(f"<li>{_e(w['message'])}</li>" for w in warnings) + "</ul>")
    for note in notes:
        parts.append(f'<div class="verdict note">{_e(note)}</div>')

    parts.append("<h2>Drift</h2>")
    parts.extend(_drift_html(date, d) for date, d in numbers["drift"].items())
    parts.append("<h2>Figures</h2>")
    for f in figures:
        data = base64.b64encode(f["png"]).decode("ascii")
        parts.append(
            f'<figure id="{_e(f["name"])}"><img alt="{_e(f["title"])}" src="data:image/png;base64,{data}"><figcaption>{_e(f["caption"])}</figcaption></figure>'
        )

    parts.append("<h2>Per day</h2>")
    parts.extend(_days_html(numbers))
    parts.append(f'<p class="meta">The same numbers, with the histograms, are in {JSON_NAME} beside this file.</p>')
    parts.append("</body></html>")
    return "\n".join(parts)


def _drift_html(date: str, d: dict[str, Any]) -> str:
    """One reported day's drift: a line and the table of its quantities."""
    rows = [
        f"<tr><td class='l'>{_e(name)}</td><td class='l'>{_e(q['kind'])}</td><td>{_num(q['value'], '{:+.4f}' if q['kind'] == 'rate' else '{:.4f}')}</td>"
        f"<td>{_e(_fmt_side(q, 'day'))}</td><td>{_e(_fmt_side(q, 'baseline'))}</td><td class='l'>{_e(q.get('level') or '')}</td></tr>"
        for name, q in d["quantities"].items()
    ]
    line = f"<p>{_e(date)}: {d['rows']:,} rows against {d['baseline_rows']:,} baseline rows ({_e(', '.join(d['baseline_dates']) or 'none')})</p>"
    if not rows:
        return line
    head = "<tr><th class='l'>quantity</th><th class='l'>kind</th><th>value</th><th>day</th><th>baseline</th><th class='l'>level</th></tr>"
    return line + "<table>" + head + "".join(rows) + "</table>"


def _days_html(numbers: dict[str, Any]) -> list[str]:
    """The per-day table: a header and one row per day (a missing day says why)."""
    parts = []
    labels = numbers["labels"]
    head = ["date", "role", "rows", *STATUSES, *labels, "no text", "no image", "undecodable", "mean conf.", "rows/s"]
    parts.append(
        "<table><tr>" + "".join(f"<th{' class=l' if i < 2 else ''}>{_e(h)}</th>" for i, h in enumerate(head)) + "</tr>"
    )
    for d in numbers["days"]:
        cls = "report" if d["role"] == "report" else ""
        if not d["committed"]:
            parts.append(
                f"<tr class='missing {cls}'><td class='l'>{_e(d['date'])}</td><td class='l'>{_e(d['role'])}</td><td class='l' colspan='{len(head) - 2}'>missing: {_e(d['why_missing'])}</td></tr>"
            )
            continue
        tp = d["throughput"]
        cells = [
            d["rows"],
            *[d["by_status"].get(s, 0) for s in STATUSES],
            *[d["by_sentiment"].get(k, 0) for k in labels],
            d["missing_text"],
            d["missing_image"],
            d["unreadable_image"],
        ]
        mean = d["distributions"]["confidence"]["mean"]
        rate = tp.get("rows_per_second") or tp.get("rows_per_second_per_shard")
        parts.append(
            f"<tr class='{cls}'><td class='l'>{_e(d['date'])}</td><td class='l'>{_e(d['role'])}</td>"
            + "".join(f"<td>{c:,}</td>" for c in cells)
            + f"<td>{_num(mean, '{:.3f}')}</td><td>{_num(rate, '{:,.0f}')}</td></tr>"
        )
    parts.append("</table>")
    return parts


def _fmt_side(q: dict[str, Any], side: str) -> str:
    v = q.get(side)
    if q["kind"] == "rate":
        return "" if v is None else f"{v:.2%}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {s:.0%}" for k, s in v.items())
    mean = q.get("mean" if side == "day" else "baseline_mean")
    return "" if mean is None else f"mean {mean:.3f}"


# --------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    s = Settings.load()  # defaults from CTMWA_* where set
    parser.add_argument("--scores", required=True, help="scores root (the scorer's --output); path or URI")
    parser.add_argument(
        "--model-version", required=True, help="the model version whose scores to report (model_version=V)"
    )
    parser.add_argument(
        "--date", required=True, help="the day to report (YYYY-MM-DD); with --end-date the first of a range"
    )
    parser.add_argument(
        "--end-date",
        default=None,
        help="last day of a range report (included); each day is compared with its own baseline",
    )
    parser.add_argument(
        "--baseline-days",
        type=int,
        default=s.baseline_days,
        help=f"days before the report day that form its baseline (default {s.baseline_days}, CTMWA_BASELINE_DAYS)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="folder for report.html and report.json (default: SCORES/model_version=V/_reports/PARTITION/)",
    )
    parser.add_argument(
        "--partition-template",
        default=s.partition_template,
        help=f"a day's partition (default {s.partition_template!r}, CTMWA_PARTITION_TEMPLATE)",
    )
    parser.add_argument(
        "--psi-warn",
        type=float,
        default=s.drift_psi_warn,
        help=f"PSI that warns (default {s.drift_psi_warn}, CTMWA_DRIFT_PSI_WARN)",
    )
    parser.add_argument(
        "--psi-alert",
        type=float,
        default=s.drift_psi_alert,
        help=f"PSI that alerts (default {s.drift_psi_alert}, CTMWA_DRIFT_PSI_ALERT)",
    )
    parser.add_argument(
        "--rate-warn",
        type=float,
        default=s.drift_rate_warn,
        help=f"change of a status share that warns, 0.02 = 2 points (default {s.drift_rate_warn}, CTMWA_DRIFT_RATE_WARN)",
    )
    parser.add_argument(
        "--rate-alert",
        type=float,
        default=s.drift_rate_alert,
        help=f"change of a status share that alerts (default {s.drift_rate_alert}, CTMWA_DRIFT_RATE_ALERT)",
    )
    parser.add_argument(
        "--min-rows",
        type=int,
        default=s.drift_min_rows,
        help=f"fewer rows than this: nothing alerted (default {s.drift_min_rows}, CTMWA_DRIFT_MIN_ROWS)",
    )
    parser.add_argument(
        "--fail-on-drift",
        action=argparse.BooleanOptionalAction,
        default=s.fail_on_drift,
        help="exit with status 1 when an alert fires (default off, CTMWA_FAIL_ON_DRIFT)",
    )


def run(args: argparse.Namespace) -> int:
    thresholds = drift.Thresholds(
        psi_warn=args.psi_warn,
        psi_alert=args.psi_alert,
        rate_warn=args.rate_warn,
        rate_alert=args.rate_alert,
        min_rows=args.min_rows,
    )
    result = write_report(
        args.scores,
        args.model_version,
        args.date,
        args.out,
        end_date=args.end_date,
        baseline_days=args.baseline_days,
        thresholds=thresholds,
        partition_template=args.partition_template,
    )
    print(result["html"])
    print(result["json"])
    for alert in result["alerts"]:
        print(f"ALERT {alert['message']}")
    for note in result["notes"]:
        print(f"note: {note}")
    return 1 if result["alerts"] and args.fail_on_drift else 0
