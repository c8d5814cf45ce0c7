"""The health report: its numbers against a direct pyarrow computation, PSI, the self-contained HTML, missing days,
thresholds from flags and CTMWA_* settings, the matplotlib extra, and that readers skip `_reports`."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from ctmwa_batch.cli import main as cli
from ctmwa_batch.io.partitions import list_input, output_dir
from ctmwa_batch.monitoring import drift, report
from ctmwa_batch.schema import STATUSES
from ctmwa_batch.settings import Settings, SettingsError
from tests.scores_lake import LABELS, Mix, commit_day, days, draw_scores

REPO = Path(__file__).resolve().parents[3]
VERSION = "abc123"
DAYS = days("2026-03-01", 8)  # seven baseline days and the report day
DRIFTED = Mix(
    sentiment=(0.1, 0.2, 0.7), status=(0.5, 0.04, 0.45, 0.01, 0.0), unreadable=0.3, confidence=(2.0, 3.0), evidence=True
)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    """Seven normal days (one of them, 2026-03-04, never scored; 2026-03-05 scored but not committed) and a drifted 8th."""
    root = tmp_path_factory.mktemp("scores")
    for k, d in enumerate(DAYS[:-1]):
        if d == "2026-03-04":
            continue
        out = commit_day(root, VERSION, d, draw_scores(1500, k, Mix(evidence=True), d), row_group_size=400)
        if d == "2026-03-05":
            (out / "_SUCCESS.json").unlink()  # parts on disk, no commit: must not be read
    commit_day(root, VERSION, DAYS[-1], draw_scores(1500, 99, DRIFTED, DAYS[-1]), row_group_size=400)
    return root


@pytest.fixture(scope="module")
def written(lake: Path, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("report")
    result = report.write_report(str(lake), VERSION, DAYS[-1], str(out), baseline_days=7)
    return {
        "out": out,
        "result": result,
        "json": json.loads((out / "report.json").read_text()),
        "html": (out / "report.html").read_text(),
    }


def test_numbers_match_a_direct_pyarrow_computation(lake, written):
    by_date = {d["date"]: d for d in written["json"]["days"]}
    for date in [d for d in DAYS if d not in ("2026-03-04", "2026-03-05")]:
        table = pq.read_table(output_dir(str(lake), VERSION, f"dt={date}"))
        got = by_date[date]
        assert got["committed"] and got["rows"] == table.num_rows
        statuses = table.column("status").to_pylist()
        assert got["by_status"] == {s: statuses.count(s) for s in STATUSES}
        sentiments = [s for s in table.column("sentiment").to_pylist() if s is not None]
        assert got["by_sentiment"] == {k: sentiments.count(k) for k in LABELS} and got["scored"] == len(sentiments)
        assert got["missing_text"] == table.num_rows - sum(table.column("has_text").to_pylist())
        assert got["missing_image"] == table.num_rows - sum(table.column("has_image").to_pylist())
        assert got["unreadable_image"] == sum(
            1 for e in table.column("error").to_pylist() if e and e.startswith("image:")
        )
        assert got["rates"]["status:image_missing"] == pytest.approx(
            statuses.count("image_missing") / table.num_rows, abs=1e-6
        )
        for name in ("confidence", "text_weight", "image_weight", "text_evidence", "image_evidence"):
            values = (
                pc.drop_null(table.column(name)).to_numpy().astype(np.float64)
            )  # bins [k/100, (k+1)/100) in float64
            dist = got["distributions"][name]
            assert dist["histogram"] == np.histogram(values, bins=100, range=(0, 1))[0].tolist()
            assert dist["count"] == values.size and dist["nulls"] == table.column(name).null_count
            assert dist["mean"] == pytest.approx(float(values.astype(np.float64).mean()), abs=1e-6)
        success = json.loads((Path(output_dir(str(lake), VERSION, f"dt={date}")) / "_SUCCESS.json").read_text())
        assert got["throughput"]["rows_per_second"] == success["timings"]["rows_per_second"]


def test_psi_by_hand_and_for_equal_shares():
    assert drift.psi([10, 20, 30], [1, 2, 3]) == 0.0  # same shares, whatever the counts
    e, a = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    assert drift.psi(e, a) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    assert drift.psi([1, 0], [0, 1]) == pytest.approx(
        2 * (1 - 1e-4) * np.log(1 / 1e-4)
    )  # empty bins are floored, stay finite
    # deciles of a uniform fine histogram: ten groups of ten fine bins
    assert drift.quantile_edges(np.ones(100), 10) == list(range(0, 101, 10))
    assert drift.quantile_edges(np.eye(100)[42] * 50, 10) == [0, 43, 100]  # all mass in one bin: no empty middle groups


def test_identical_days_have_zero_psi_and_no_alert(tmp_path):
    table = draw_scores(1000, 7, Mix(evidence=True))
    for d in days("2026-05-01", 3):
        commit_day(tmp_path, VERSION, d, table)
    numbers = drift.build(str(tmp_path), VERSION, "2026-05-03", baseline_days=2)
    q = numbers["drift"]["2026-05-03"]["quantities"]
    for name in ("sentiment_mix", "confidence", "text_weight", "image_weight", "text_evidence", "image_evidence"):
        assert q[name]["value"] == 0.0
    assert all(q[f"status:{s}"]["value"] == 0.0 for s in STATUSES)
    assert numbers["alerts"] == [] and numbers["warnings"] == [] and numbers["notes"] == []


def test_a_shifted_day_crosses_the_alert_threshold_and_normal_days_do_not(lake, written):
    numbers = written["json"]
    q = numbers["drift"][DAYS[-1]]["quantities"]
    assert q["sentiment_mix"]["value"] > 0.25 and q["confidence"]["value"] > 0.25
    flagged = {a["quantity"]: a for a in numbers["alerts"]}
    assert {"sentiment_mix", "confidence", "status:ok", "status:image_missing", "unreadable_image"} <= set(flagged)
    assert set(flagged) <= {
        "sentiment_mix",
        "confidence",
        "status:ok",
        "status:image_missing",
        "unreadable_image",
    }  # nothing else moved
    a = flagged["sentiment_mix"]
    assert (
        a["threshold"] == 0.25
        and a["value"] == q["sentiment_mix"]["value"]
        and a["level"] == "alert"
        and DAYS[-1] in a["message"]
    )
    assert flagged["status:image_missing"]["value"] > 0.3 and flagged["status:image_missing"]["threshold"] == 0.05
    # a range report over the normal days flags none of them
    normal = drift.build(str(lake), VERSION, DAYS[3], DAYS[-2], baseline_days=3)
    assert normal["alerts"] == [] and set(normal["drift"]) == {"2026-03-06", "2026-03-07"}


def test_a_missing_baseline_day_is_reported_and_left_out(written):
    numbers = written["json"]
    assert numbers["baseline"]["missing"] == ["2026-03-04", "2026-03-05"]
    assert numbers["baseline"]["present"] == ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-06", "2026-03-07"]
    assert numbers["drift"][DAYS[-1]]["baseline_dates"] == numbers["baseline"]["present"]
    why = {d["date"]: d.get("why_missing") for d in numbers["days"]}
    assert why["2026-03-04"] == "no scores for this day" and why["2026-03-05"] == "not committed (no _SUCCESS.json)"
    assert any(
        "2 of 7 baseline day(s) have no committed scores" in n and "2026-03-04, 2026-03-05" in n
        for n in numbers["notes"]
    )
    assert "2 of 7 baseline day(s) have no committed scores" in written["html"]


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.imgs: list[dict] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs)
        self.urls += [
            v for k, v in attrs.items() if k in ("src", "href", "action", "data") and v and not v.startswith("data:")
        ]


def test_the_html_is_one_self_contained_file(written):
    assert sorted(p.name for p in written["out"].iterdir()) == ["report.html", "report.json"]
    parser = _Collector()
    parser.feed(written["html"])
    parser.close()
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    assert parser.urls == []  # nothing fetched: every image is a data URI
    assert len(parser.imgs) >= 4
    for img in parser.imgs:
        assert img["src"].startswith("data:image/png;base64,") and img["alt"]
        assert base64.b64decode(img["src"].split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "http://" not in written["html"] and "https://" not in written["html"] and "url(" not in written["html"]
    assert f"{len(written['json']['alerts'])} alert(s)" in written["html"]
    assert written["json"]["alerts"][0]["message"].split(":")[0] in written["html"]


def test_evidence_columns_are_reported_only_when_present(tmp_path):
    for k, d in enumerate(days("2026-06-01", 2)):
        commit_day(tmp_path, VERSION, d, draw_scores(300, k, Mix(evidence=False)))
    result = report.write_report(str(tmp_path), VERSION, "2026-06-02", str(tmp_path / "out"), baseline_days=1)
    assert set(result["days"][-1]["distributions"]) == {"confidence", "text_weight", "image_weight"}
    assert "text_evidence" not in result["drift"]["2026-06-02"]["quantities"]
    assert 'alt="Modality weights"' in (tmp_path / "out" / "report.html").read_text()


def test_all_null_evidence_columns_are_counted_but_not_drawn(tmp_path):
    for k, d in enumerate(days("2026-06-10", 2)):
        table = draw_scores(300, k, Mix(evidence=True))
        for name in ("text_evidence", "image_evidence"):  # an older head: the columns exist, every value null
            table = table.set_column(table.schema.get_field_index(name), name, pa.nulls(table.num_rows, pa.float32()))
        commit_day(tmp_path, VERSION, d, table)
    result = report.write_report(str(tmp_path), VERSION, "2026-06-11", str(tmp_path / "out"), baseline_days=1)
    assert result["days"][-1]["distributions"]["text_evidence"] == {
        "count": 0,
        "nulls": 300,
        "mean": None,
        "histogram": [0] * 100,
    }
    assert "text_evidence" not in result["drift"]["2026-06-11"]["quantities"]
    assert 'alt="Modality weights"' in (tmp_path / "out" / "report.html").read_text()


def test_readers_and_listings_skip_the_reports_folder(lake, written):
    default = report.write_report(str(lake), VERSION, DAYS[-1])  # default place: _reports/dt=... beside the scores
    assert default["out_dir"] == f"{lake}/model_version={VERSION}/_reports/dt={DAYS[-1]}"
    assert Path(default["html"]).is_file()
    version_dir = Path(output_dir(str(lake), VERSION, ""))
    committed = [d for d in written["json"]["days"] if d["committed"]]
    table = ds.dataset(version_dir, format="parquet", partitioning="hive").to_table(columns=["status"])
    uncommitted = pq.read_table(
        version_dir / "dt=2026-03-05"
    ).num_rows  # the uncommitted day's parts, which readers do see
    assert table.num_rows == sum(d["rows"] for d in committed) + uncommitted
    assert not any("_reports" in f.path for f in list_input(str(version_dir)))


def test_the_report_day_must_be_committed(lake, tmp_path):
    with pytest.raises(drift.ReportInputMissing, match=r"no committed scores for 2026-03-04 .*dt=2026-03-04"):
        report.write_report(str(lake), VERSION, "2026-03-04", str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_cli_flags_and_settings_set_the_thresholds(lake, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    assert (
        cli.main(["report", "--scores", str(lake), "--model-version", VERSION, "--date", DAYS[-1], "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert str(out / "report.html") in printed and "ALERT 2026-03-08: sentiment mix PSI" in printed
    assert json.loads((out / "report.json").read_text())["thresholds"]["psi_alert"] == 0.25
    # flags: a PSI alert at 5 silences the PSI alerts; --fail-on-drift turns the remaining alerts into exit status 1
    argv = [
        "report",
        "--scores",
        str(lake),
        "--model-version",
        VERSION,
        "--date",
        DAYS[-1],
        "--out",
        str(out),
        "--psi-warn",
        "4",
        "--psi-alert",
        "5",
        "--fail-on-drift",
    ]
    assert cli.main(argv) == 1
    alerts = {a["quantity"] for a in json.loads((out / "report.json").read_text())["alerts"]}
    assert "sentiment_mix" not in alerts and "status:image_missing" in alerts
    # CTMWA_* settings are the flags' defaults
    monkeypatch.setenv("CTMWA_DRIFT_RATE_ALERT", "0.9")
    monkeypatch.setenv("CTMWA_DRIFT_RATE_WARN", "0.8")
    monkeypatch.setenv("CTMWA_DRIFT_PSI_ALERT", "9")
    monkeypatch.setenv("CTMWA_DRIFT_PSI_WARN", "8")
    monkeypatch.setenv("CTMWA_FAIL_ON_DRIFT", "true")
    assert (
        cli.main(["report", "--scores", str(lake), "--model-version", VERSION, "--date", DAYS[-1], "--out", str(out)])
        == 0
    )
    numbers = json.loads((out / "report.json").read_text())
    assert numbers["alerts"] == [] and numbers["thresholds"]["rate_alert"] == 0.9
    monkeypatch.setenv("CTMWA_FAIL_ON_DRIFT", "perhaps")
    with pytest.raises(SettingsError, match="CTMWA_FAIL_ON_DRIFT"):
        Settings.load()


def test_settings_check_the_thresholds():
    s = Settings.load(environ={"CTMWA_FAIL_ON_DRIFT": "1", "CTMWA_BASELINE_DAYS": "14", "CTMWA_DRIFT_PSI_WARN": "0.2"})
    assert s.fail_on_drift is True and s.baseline_days == 14
    assert report.thresholds_from(s) == drift.Thresholds(psi_warn=0.2)
    with pytest.raises(SettingsError, match="CTMWA_DRIFT_PSI_ALERT"):
        Settings.load(environ={"CTMWA_DRIFT_PSI_WARN": "0.5"})  # above the default alert of 0.25
    with pytest.raises(SettingsError, match="CTMWA_DRIFT_MIN_ROWS"):
        Settings.load(environ={"CTMWA_DRIFT_MIN_ROWS": "-1"})


def test_small_days_are_reported_but_never_alerted(tmp_path):
    commit_day(tmp_path, VERSION, "2026-07-01", draw_scores(50, 1))
    commit_day(tmp_path, VERSION, "2026-07-02", draw_scores(50, 2, DRIFTED))
    numbers = drift.build(str(tmp_path), VERSION, "2026-07-02", baseline_days=1)
    assert numbers["drift"]["2026-07-02"]["quantities"]["sentiment_mix"]["level"] == "alert"
    assert numbers["alerts"] == [] and any("fewer than min_rows 200" in n for n in numbers["notes"])
    assert drift.build(str(tmp_path), VERSION, "2026-07-02", baseline_days=1, thresholds=drift.Thresholds(min_rows=10))[
        "alerts"
    ]


def test_without_matplotlib_the_error_names_the_extra(lake, tmp_path):
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from ctmwa_batch.cli import main as cli\n"
        f"sys.exit(cli.main(['report', '--scores', {str(lake)!r}, '--model-version', {VERSION!r}, '--date', {DAYS[-1]!r}, '--out', {str(tmp_path)!r}]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2, proc.stderr
    assert "ReportDependencyMissing" in proc.stderr and "pip install 'ctmwa-batch[report]'" in proc.stderr
    assert "Traceback" not in proc.stderr and not any(tmp_path.iterdir())


def _requirements(extra: str, seen: set[str] | None = None) -> set[str]:
    """Every requirement an extra pulls in (following ctmwa-batch[...] self-references)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    seen = seen if seen is not None else set()
    out = set()
    for req in project["optional-dependencies"][extra] if extra else project["dependencies"]:
        if req.startswith("ctmwa-batch["):
            for inner in req[len("ctmwa-batch[") : -1].split(","):
                if inner not in seen:
                    seen.add(inner)
                    out |= _requirements(inner, seen)
        else:
            out.add(req.split(">")[0].split("=")[0].split("<")[0].strip())
    return out


def test_matplotlib_comes_with_the_report_and_airflow_extras_never_the_workers():
    assert "matplotlib" in _requirements("report") and "matplotlib" in _requirements("airflow")
    for worker in ("", "gpu", "cpu"):
        assert "matplotlib" not in _requirements(worker), worker
