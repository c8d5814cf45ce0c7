"""The documentation site: `mkdocs build --strict` passes, and the examples the pages include run.

Pages include their examples from docs/examples/ (pymdownx.snippets); the tests here run every one of those files,
so an example that stops working fails the suite, and README.md shows the same text (checked here too).
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.dags.conftest import REPO, airflow_env

ROOT = REPO
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
INCLUDE = re.compile(r'--8<-- "(docs/examples/[^":]+)(?::(\w+))?"')
# the examples this module runs; a new file in docs/examples/ needs a test here first
EXECUTED = {"posts_to_scores.sh", "my_dag.py", "downstream_dag.py"}


def section(path: Path, name: str) -> str:
    """The text between `--8<-- [start:name]` and `--8<-- [end:name]`, as pymdownx.snippets includes it."""
    text = path.read_text()
    m = re.search(rf"^[^\n]*--8<-- \[start:{name}\]\n(.*?)^[^\n]*--8<-- \[end:{name}\]", text, re.S | re.M)
    assert m, f"{path.name} has no section {name!r}"
    return m.group(1)


def test_every_included_example_is_a_file_the_suite_runs():
    included = {(m.group(1), m.group(2)) for page in DOCS.rglob("*.md") for m in INCLUDE.finditer(page.read_text())}
    assert {Path(f).name for f, _ in included} == EXECUTED == {p.name for p in EXAMPLES.iterdir() if p.is_file()}
    for file, name in included:
        assert (ROOT / file).is_file() and (name is None or section(ROOT / file, name).strip())


def test_the_readme_shows_the_examples_as_they_are():
    readme = (ROOT / "README.md").read_text()
    assert section(EXAMPLES / "posts_to_scores.sh", "commands") in readme
    assert section(EXAMPLES / "my_dag.py", "dag") in readme


@pytest.mark.slow
def test_the_site_builds_strict(tmp_path):
    """Broken links, a missing snippet, a page outside the nav, an API module that no longer exists: all fail."""
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    cli = (site / "reference" / "cli" / "index.html").read_text()
    # generated from the parsers: every command and subcommand, flags included
    for prog in ("ctmwa-batch score", "ctmwa-batch models publish", "ctmwa-train prepare", "ctmwa-export head"):
        assert f"<code>{prog}</code>" in cli, prog
    assert "--max-rows-per-shard" in cli
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "score_partition" in api and "ctmwa_batch.scoring.job" in api
    # every include rendered: the page's text (markup stripped) holds each line of the included section
    for source in DOCS.rglob("*.md"):
        rel = source.relative_to(DOCS).with_suffix("")
        built = site / ("index.html" if rel.name == "index" else rel / "index.html")
        text = html.unescape(re.sub(r"<[^>]+>", "", built.read_text()))
        assert "--8<--" not in text, f"{rel}: an include was not expanded"
        for m in INCLUDE.finditer(source.read_text()):
            for line in section(ROOT / m.group(1), m.group(2)).splitlines():
                assert line.strip() in text, f"{rel}: {line!r} of {m.group(1)} missing"
    assert (site / "health_report_drift.png").stat().st_size > 10_000


@pytest.mark.slow
def test_posts_to_scores_example_runs(tmp_path, tiny_clip_dir):
    """docs/examples/posts_to_scores.sh as it is: export, prepare, train, export the head, inspect, score."""
    from fixtures.posts import write_partition
    from tests.training.datasets.raw import make_balanced_mvsa_single

    mvsa = make_balanced_mvsa_single(tmp_path / "MVSA_Single", (20, 20, 20))
    posts = write_partition(tmp_path / "lake", "2026-11-26", rows=40, bad_rows=False)
    posts_dir = tmp_path / "lake" / "posts" / "dt=2026-11-26"
    env = {
        **os.environ,
        "CLIP": str(tiny_clip_dir),
        "MVSA": str(mvsa),
        "POSTS": str(posts_dir),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    result = subprocess.run(
        ["bash", str(EXAMPLES / "posts_to_scores.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["labels"] == ["positive", "neutral", "negative"]
    (success,) = (tmp_path / "lake" / "scores").glob("model_version=*/dt=2026-11-26/_SUCCESS.json")
    scores = pq.read_table(success.parent)
    assert scores.num_rows == posts["rows"] == json.loads(success.read_text())["rows"]["output"]
    assert set(scores.column("status").to_pylist()) <= {"ok", "text_missing", "image_missing"}
    assert set(scores.column("sentiment").to_pylist()) <= set(manifest["labels"])


def test_dag_examples_parse(tmp_path):
    """docs/examples/*.py parse with Airflow's DagBag, without a database or a Connection, into the DAGs shown."""
    result = tmp_path / "parse.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.dags.parse_probe", str(EXAMPLES), str(result)],
        env=airflow_env(
            tmp_path / "home", AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path}/no/such/dir/airflow.db"
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parsed = json.loads(result.read_text())
    assert parsed["import_errors"] == {} and parsed["sql"] == []
    assert set(parsed["dags"]) == {"posts_pipeline", "sentiment_rollup"}
    tasks = parsed["dags"]["posts_pipeline"]["tasks"]
    assert set(tasks) == {
        "ingest",
        "sentiment.plan",
        "sentiment.shards",
        "sentiment.score_shard",
        "sentiment.commit",
        "sentiment.health_report",
        "dbt_run",
    }
    shard = tasks["sentiment.score_shard"]
    assert shard["mapped"] and (shard["queue"], shard["pool"], shard["retries"]) == ("gpu", "ctmwa_gpu", 2)
    assert "sentiment.health_report" in tasks["dbt_run"]["upstream"]
    assert "ingest" in tasks["sentiment.plan"]["upstream"]
    assert set(parsed["dags"]["sentiment_rollup"]["tasks"]) == {"rollup"}
