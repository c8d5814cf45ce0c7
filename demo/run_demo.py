"""`make demo`: the whole pipeline on one machine, in a few minutes, with nothing downloaded.

1. a local lake: a few days of generated posts (real JPEGs, texts, and the bad rows of a real feed) at
   demo_output/lake/posts/dt=YYYY-MM-DD/, with their labels beside them (demo_output/lake/labels/); the last day is
   drifted (many more posts without an image, a mostly negative mix) for the health report to catch
2. Airflow on its embedded defaults: AIRFLOW_HOME=demo_output/airflow, a SQLite metadata database (`airflow db migrate`)
3. the ctmwa_export_model DAG: a tiny CLIP built offline -> ONNX encoders -> the labelled training posts embedded with
   them -> ctmwa-train -> ctmwa-export head -> validated -> published at demo_output/models/{version}/ + CURRENT
4. the ctmwa_score_daily DAG for each day (as the nightly schedule would run it), then once more for the first day
   to show that a rerun is a no-op
5. where the scores are, and a table per day: rows per status, sentiment distribution, the demo model's accuracy
   against the generated labels
6. the health report of the last day (`ctmwa-batch report`): report.html and report.json, its alerts, its path

Airflow's own log goes to demo_output/airflow/demo.log; this script prints the story.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]

NOTE = """\
About the model: the demo model is trained on generated posts, by a tiny CLIP with random weights that was built
offline (fixtures/clip.py), so its accuracy says that the pipeline learns and scores end to end, not how well CTMWA
reads real posts. For a real model, trigger ctmwa_export_model with
  clip_source = "openai/clip-vit-base-patch32" (or a local folder of it: the default)
  training_posts = a labelled posts Parquet (post_id, text, image, split, label, t_label, v_label, query), e.g. made
                   from MVSA-Single / MVSA-Multiple / TumEmo by `ctmwa-train prepare ...`
and the nightly DAG scores with it from the next run on (CURRENT moves when it is published)."""


class Story:
    """Prints the demo's own lines to the terminal while Airflow's output goes to a log file."""

    def __init__(self, out: IO[str]):
        self.out = out
        self.t0 = time.perf_counter()

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def step(self, text: str) -> None:
        self.say(f"[{time.perf_counter() - self.t0:6.1f}s] {text}")


@contextlib.contextmanager
def output_to(log_path: Path) -> Iterator[IO[str]]:
    """Send everything written to stdout/stderr (Airflow's task logs included) to log_path; yields the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            terminal.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo.run_demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "demo_output",
        help="where everything goes (its demo folders are wiped first)",
    )
    parser.add_argument("--start-date", default="2026-01-05", help="first day of the lake (YYYY-MM-DD)")
    parser.add_argument("--days", type=int, default=4, help="days of posts in the lake (the last one drifted)")
    parser.add_argument("--no-drift", action="store_true", help="generate the last day like the others")
    parser.add_argument("--rows", type=int, default=300, help="good posts per day (10 bad rows come on top)")
    parser.add_argument("--train-posts", type=int, default=2400, help="labelled posts the demo model is trained on")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs of the demo model")
    parser.add_argument("--clip-width", type=int, default=64, help="hidden size of the tiny CLIP's towers")
    parser.add_argument(
        "--clip-dim", type=int, default=32, help="embedding size of the tiny CLIP (the model's input width)"
    )
    parser.add_argument(
        "--rows-per-shard", type=int, default=100, help="rows per scoring task (shows the mapped shards)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out.resolve()
    home, lake, models = out / "airflow", out / "lake", out / "models"
    for folder in (home, lake, models, out / "training"):  # only ours: python -m demo.train writes beside them
        shutil.rmtree(folder, ignore_errors=True)
    home.mkdir(parents=True)
    dates = [(dt.date.fromisoformat(args.start_date) + dt.timedelta(days=k)).isoformat() for k in range(args.days)]
    # Airflow reads its configuration when it is imported; the scoring tasks read CTMWA_* when they run.
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "CTMWA_INPUT_ROOT": str(lake / "posts"),
            "CTMWA_OUTPUT_ROOT": str(lake / "scores"),
            "CTMWA_MODELS_ROOT": str(models),
            "CTMWA_DEVICE": "auto",  # the GPU when onnxruntime-gpu sees one, else the CPU
            "CTMWA_MAX_ROWS_PER_SHARD": str(args.rows_per_shard),
            "CTMWA_PASSTHROUGH": "created_at",
            "CTMWA_BASELINE_DAYS": str(max(1, args.days - 1)),  # the demo's lake holds only these days
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    story = Story(sys.stdout)
    story.say(f"ctmwa-batch demo: {args.days} days of posts, Airflow on SQLite, everything under {out}")
    log_path = home / "demo.log"
    story.say(f"(the libraries' and Airflow's own output goes to {log_path})")
    with output_to(log_path) as terminal:
        story.out = terminal
        ok = _run(story, args, out, home, lake, dates)
    story.out = sys.stdout
    if not ok:
        story.say(f"\nSomething failed; the last lines of {log_path}:\n")
        story.say("".join(log_path.read_text().splitlines(keepends=True)[-60:]))
        return 1
    summarize(story, out, lake, models, dates)
    with output_to(log_path) as terminal:  # the report's own log lines go to the log; the story says what matters
        story.out = terminal
        health(story, out, lake, models, dates)
    story.out = sys.stdout
    story.say()
    story.say(NOTE)
    story.step("done")
    return 0


def _run(story: Story, args: argparse.Namespace, out: Path, home: Path, lake: Path, dates: list[str]) -> bool:
    """Build the lake and the Airflow home, release the demo model, score every day; False when a step failed."""
    from fixtures import posts as demo_posts

    drifted = dates[-1:] if not args.no_drift and len(dates) > 1 else []
    story.step(
        f"writing the lake: {len(dates)} partitions of {args.rows} posts + 10 bad rows each"
        + (f" ({drifted[0]} drifted: more posts without an image, a mostly negative mix)" if drifted else "")
        + f", and {args.train_posts} labelled training posts"
    )
    demo_posts.write_lake(
        lake, [d for d in dates if d not in drifted], rows=args.rows, row_group_size=args.rows_per_shard
    )
    for date in drifted:
        demo_posts.write_partition(lake, date, args.rows, row_group_size=args.rows_per_shard, spec=demo_posts.DRIFTED)
    training_posts = demo_posts.write_training_posts(out / "training" / "posts.parquet", n=args.train_posts)

    story.step("building a tiny CLIP offline (random weights: fixtures/clip.py)")
    from fixtures.clip import build_tiny_clip

    clip_dir = build_tiny_clip(
        out / "training" / "tiny_clip", seed=0, hidden_size=args.clip_width, projection_dim=args.clip_dim
    )

    story.step(f"airflow db migrate (SQLite at {home / 'airflow.db'})")
    proc = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True)
    print(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return False

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    if bag.import_errors:
        story.step(f"DAG import errors: {json.dumps(bag.import_errors, indent=2)}")
        return False

    def run(dag_id: str, logical_date: dt.datetime, conf: dict | None, label: str) -> bool:
        t0 = time.perf_counter()
        dr = bag.get_dag(dag_id).test(logical_date=logical_date, run_conf=conf)
        state = str(getattr(dr.state, "value", dr.state))
        story.step(f"  {dag_id} {label}: {state} in {time.perf_counter() - t0:.1f}s")
        return state == "success"

    story.step(
        "ctmwa_export_model: export encoders -> embed training posts -> train -> export head -> validate -> publish"
    )
    conf = {
        "clip_source": str(clip_dir),
        "training_posts": str(training_posts),
        "labels": ",".join(demo_posts.LABELS),
        "epochs": args.epochs,
        "train_config": {"training": {"batch_size": 64, "lr": 0.005}},
        "torch_threads": 1,  # a tiny model: one thread is as fast, and does not stall on a busy machine
    }
    if not run("ctmwa_export_model", _utc(dates[0]), conf, "(the demo model)"):
        return False
    story.step(
        "ctmwa_score_daily, night by night: wait_for_input -> plan -> score_shard (mapped) -> commit -> health_report -> publish, report"
    )
    for date in dates:
        # The nightly run for day D starts once D is over: its data interval is [D, D+1), so it scores dt=D.
        if not run("ctmwa_score_daily", _utc(date) + dt.timedelta(days=1), None, f"dt={date}"):
            return False
    return run(
        "ctmwa_score_daily",
        _utc(dates[0]) + dt.timedelta(days=1),
        None,
        f"dt={dates[0]} again (committed already: a no-op)",
    )


def _utc(date: str) -> dt.datetime:
    return dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC)


def summarize(story: Story, out: Path, lake: Path, models: Path, dates: list[str]) -> None:
    """Where the model and the scores are, the per-day table, and the demo model's accuracy."""
    from ctmwa_batch.io.partitions import output_dir, read_success
    from ctmwa_batch.model import registry
    from ctmwa_batch.model.bundle import load_bundle
    from ctmwa_batch.scoring import job, orchestrate
    from fixtures import posts as demo_posts

    version = registry.current_version(models)
    manifest = load_bundle(registry.resolve(models), verify=False).manifest
    metrics = manifest.get("training_metrics") or {}
    story.say()
    story.say(f"Model: {models / str(version)}  (CURRENT -> {version}; labels {manifest.get('labels')})")
    if metrics:
        story.say(
            f"  trained on generated posts: test accuracy {metrics.get('test_accuracy', float('nan')):.3f}, "
            f"weighted F1 {metrics.get('test_f1_weighted', float('nan')):.3f} (best epoch {metrics.get('best_epoch')})"
        )
    summaries = []
    for date in dates:
        path = output_dir(str(lake / "scores"), str(version), f"dt={date}")
        summaries.append(orchestrate.summarize(job.summary(read_success(path), path), date=date, skipped=False))
    story.say(f"\nScores: {lake / 'scores'}/model_version={version}/dt=YYYY-MM-DD/part-*.parquet (+ _SUCCESS.json)")
    story.say(orchestrate.format_report(summaries, labels=list(demo_posts.LABELS)))
    story.say("\nThe demo model against the generated labels (rows with a label and a score):")
    story.say(demo_posts.format_accuracy(demo_posts.evaluate(lake, lake / "scores", str(version), dates)))
    story.say(
        f"\nRead them with pyarrow:  pyarrow.dataset.dataset('{lake / 'scores'}/model_version={version}', partitioning='hive').to_table()"
    )
    story.say(
        f"Airflow home: {out / 'airflow'} (airflow.db, demo.log); `AIRFLOW_HOME={out / 'airflow'} airflow dags list-runs ctmwa_score_daily`"
    )


def health(story: Story, out: Path, lake: Path, models: Path, dates: list[str]) -> None:
    """The last day's health report, written by the same code as the DAG's health_report task, and its alerts."""
    from ctmwa_batch.model import registry
    from ctmwa_batch.monitoring import report
    from ctmwa_batch.settings import Settings

    version = str(registry.current_version(models))
    settings = Settings.load()
    target = out / "report"
    story.say(
        f"\nHealth report of {dates[-1]}: ctmwa-batch report --scores {lake / 'scores'} --model-version {version} --date {dates[-1]} --baseline-days {settings.baseline_days} --out {target}"
    )
    result = report.write_report(
        str(lake / "scores"),
        version,
        dates[-1],
        str(target),
        baseline_days=settings.baseline_days,
        thresholds=report.thresholds_from(settings),
    )
    for alert in result["alerts"]:
        story.say(f"  ALERT {alert['message']}")
    for warning in result["warnings"]:
        story.say(f"  warning {warning['message']}")
    if not result["alerts"] and not result["warnings"]:
        story.say("  no alert, no warning")
    story.say(f"  (the nightly DAG wrote one per day too, under {lake / 'scores'}/model_version={version}/_reports/)")
    story.say(f"Open the report: {result['html']}")


if __name__ == "__main__":
    sys.exit(main())
