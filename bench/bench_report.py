"""Benchmark of the health report's numbers: streaming (ctmwa_batch.monitoring.drift, record batches into counts and 100-bin
histograms) against the obvious alternative (pyarrow.parquet.read_table of every day, the needed columns only, then
the same numbers with pyarrow.compute and numpy), on the same committed lake in the same run.

    python bench/bench_report.py [--days 8] [--rows 1000000] [--root /tmp/ctmwa_bench_report]

The lake: `--days` committed partitions (the report day and its baseline) of `--rows` synthetic score rows each,
written through the real commit protocol (tests/scores_lake.py), with the modality evidence columns. Each way runs in
a fresh subprocess that reports its own peak RSS, so neither inherits the other's memory. The full report (figures
and HTML included) is timed as well. Prints wall time, peak RSS and the ratios, with the CPU flags.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from machine import cpu_flags  # noqa: E402

VERSION = "bench"


def build_lake(root: Path, days: list[str], rows: int) -> float:
    from tests.scores_lake import Mix, commit_day, draw_scores

    t0 = time.perf_counter()
    for k, d in enumerate(days):
        mix = (
            Mix(evidence=True)
            if k < len(days) - 1
            else Mix(sentiment=(0.2, 0.3, 0.5), status=(0.8, 0.04, 0.15, 0.01, 0.0), evidence=True)
        )
        commit_day(root, VERSION, d, draw_scores(rows, k, mix, d), row_group_size=131_072)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------- the two ways (children)


def streaming(root: str, days: list[str]) -> dict:
    from ctmwa_batch.monitoring import drift

    numbers = drift.build(root, VERSION, days[-1], baseline_days=len(days) - 1, thresholds=drift.Thresholds())
    return {
        d["date"]: {
            "rows": d["rows"],
            "by_status": d["by_status"],
            "hist": d["distributions"]["confidence"]["histogram"],
        }
        for d in numbers["days"]
    }


def read_everything(root: str, days: list[str]) -> dict:
    """The obvious way: read each day's table (projected columns) into memory, keep them all, then compute."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ctmwa_batch.io.partitions import output_dir
    from ctmwa_batch.schema import STATUSES

    columns = [
        "status",
        "sentiment",
        "confidence",
        "text_weight",
        "image_weight",
        "has_text",
        "has_image",
        "error",
        "text_evidence",
        "image_evidence",
    ]
    tables = {d: pq.read_table(output_dir(root, VERSION, f"dt={d}"), columns=columns) for d in days}
    out = {}
    for d, t in tables.items():
        present = {r["values"]: r["counts"] for r in pc.value_counts(t.column("status")).to_pylist()}
        counts = {k: present.get(k, 0) for k in STATUSES}
        _ = pc.value_counts(t.column("sentiment")).to_pylist()
        _ = (
            pc.sum(pc.invert(t.column("has_text"))),
            pc.sum(pc.invert(t.column("has_image"))),
            pc.sum(pc.match_substring(t.column("error"), "image:")),
        )
        hist = None
        for name in ("confidence", "text_weight", "image_weight", "text_evidence", "image_evidence"):
            h = np.histogram(pc.drop_null(t.column(name)).to_numpy().astype(np.float64), bins=100, range=(0, 1))[0]
            hist = h.tolist() if name == "confidence" else hist
        out[d] = {"rows": t.num_rows, "by_status": counts, "hist": hist}
    return out


def full_report(root: str, days: list[str]) -> dict:
    from ctmwa_batch.monitoring import report

    result = report.write_report(root, VERSION, days[-1], str(Path(root) / "report_out"), baseline_days=len(days) - 1)
    return {"alerts": len(result["alerts"]), "html_bytes": Path(result["html"]).stat().st_size}


def child(way: str, root: str, days: list[str]) -> None:
    import numpy  # noqa: F401  (imports outside the timing: both ways need them)
    import pyarrow.compute  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import ctmwa_batch.monitoring.drift  # noqa: F401
    import ctmwa_batch.monitoring.report  # noqa: F401

    t0 = time.perf_counter()
    result = {"streaming": streaming, "read_table": read_everything, "full_report": full_report}[way](root, days)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"way": way, "seconds": seconds, "peak_rss_mb": peak_mb, "result": result}))


def run_child(way: str, root: Path, days: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", way, "--root", str(root), "--dates", ",".join(days)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{way} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def baseline_rss() -> float:
    """Peak RSS of a child that only imports what every child imports before its clock starts (the data's share is the rest)."""
    code = "import resource, numpy, pyarrow.parquet, pyarrow.compute, ctmwa_batch.monitoring.drift, ctmwa_batch.monitoring.report; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO).stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=8, help="committed days: the report day and its baseline")
    parser.add_argument("--rows", type=int, default=1_000_000, help="score rows per day")
    parser.add_argument(
        "--root", default="/tmp/ctmwa_bench_report", help="where the lake goes (removed first, and after)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the lake")
    parser.add_argument("--reuse", action="store_true", help="use the lake a --keep run left at --root")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dates", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.root, args.dates.split(","))
        return 0

    from tests.scores_lake import days as day_list

    root = Path(args.root)
    days = day_list("2026-02-01", args.days)
    if not args.reuse:
        shutil.rmtree(root, ignore_errors=True)
    print(f"CPU: {cpu_flags()}")
    try:
        load = os.getloadavg()
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    except OSError:
        pass
    built = 0.0 if args.reuse else build_lake(root, days, args.rows)
    size = sum(f.stat().st_size for f in root.rglob("*.parquet"))
    print(
        f"lake: {args.days} committed days x {args.rows:,} rows = {args.days * args.rows:,} rows, {size / 1e6:.0f} MB of Parquet (written in {built:.0f} s)"
    )
    imports = baseline_rss()
    results = {way: run_child(way, root, days) for way in ("streaming", "read_table", "full_report")}
    s, r = results["streaming"], results["read_table"]
    assert s["result"] == r["result"], "the two ways disagree"  # same counts and histograms: a fair race
    rows = args.days * args.rows
    print(f"peak RSS of the imports alone: {imports:.0f} MB")
    print(f"{'way':<48} {'seconds':>8} {'rows/s':>12} {'peak RSS MB':>12}")
    for way, label in (
        ("streaming", "ctmwa_batch.monitoring.drift (streaming, bounded memory)"),
        ("read_table", "read_table of every day, then compute"),
        ("full_report", "full report (numbers + 6 figures + HTML)"),
    ):
        x = results[way]
        print(f"{label:<48} {x['seconds']:>8.2f} {rows / x['seconds']:>12,.0f} {x['peak_rss_mb']:>12.0f}")
    print(f"time: read_table / streaming = {r['seconds'] / s['seconds']:.2f}x")
    print(
        f"peak RSS: read_table / streaming = {r['peak_rss_mb'] / s['peak_rss_mb']:.2f}x (above the imports: {(r['peak_rss_mb'] - imports) / max(s['peak_rss_mb'] - imports, 1):.1f}x)"
    )
    print(f"full report: {results['full_report']['result']}")
    try:
        load = os.getloadavg()
        print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    except OSError:
        pass
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
