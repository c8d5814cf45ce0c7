"""`ctmwa-batch score`: unusable input (columns, types, bundle, device) fails before any output; the config and
progress; helpers shared with test_score_job.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctmwa_batch.cli.main import main as cli_main
from ctmwa_batch.config import JobConfig, ScoreConfig
from ctmwa_batch.errors import BundleError, InputSchemaError, ProviderUnavailable
from ctmwa_batch.progress import Progress
from ctmwa_batch.scoring import job
from tests import images

FIXED_TIME = "2026-11-26T03:00:00+00:00"
TEXTS = ["I love this cat", "terrible day, so sad", "A PHOTO of the beach!", "good morning 😀", "new car"]


def write_posts(path: Path, n: int, row_group_size: int = 1000, start: int = 0, **extra) -> Path:
    """n good posts (real JPEGs), in row groups of `row_group_size`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "post_id": [f"p{start + i}" for i in range(n)],
            "text": [TEXTS[i % len(TEXTS)] for i in range(n)],
            "image": [images.jpeg(40, 32, seed=(start + i) % 17) for i in range(n)],
            **extra,
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def parts_of(out_dir: str | Path) -> list[str]:
    """What a reader of the folder sees (names not starting with . or _)."""
    return sorted(f for f in os.listdir(out_dir) if not f.startswith((".", "_")))


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def cpu(**kwargs) -> JobConfig:
    """A CPU job config: ScoreConfig and JobConfig keys together, as the flat dict form takes them."""
    return JobConfig.from_dict({"device": "cpu", "workers": 0, "intra_op_threads": 1, **kwargs})


# --------------------------------------------------------------------------------------------------- fail fast


@pytest.mark.parametrize(
    ("config", "columns", "match"),
    [
        ({"image_column": "img"}, None, r"column 'img' not in .*set --image-column"),
        ({"id_column": "id"}, None, r"column 'id' not in .*set --id-column"),
        ({"text_column": "num"}, None, r"text column 'num' .* type int64, expected string; set --text-column"),
        (
            {},
            {"post_id": ["a"], "text": ["t"], "image": [1.5]},
            r"image column 'image' .* type double.*set --image-column",
        ),
        (
            {},
            {"post_id": [[1]], "text": ["t"], "image": [b"x"]},
            r"id column 'post_id' .* type list<.*int64>.*set --id-column",
        ),
        ({"passthrough": ("lang",)}, None, r"column 'lang' not in .*set --passthrough"),
    ],
)
def test_unusable_input_fails_before_any_output(encoder_bundle, tmp_path, config, columns, match):
    src = tmp_path / "posts" / "dt=2026-11-26" / "a.parquet"
    if columns:
        src.parent.mkdir(parents=True)
        pq.write_table(pa.table(columns), src)
    else:
        write_posts(src, 3, num=pa.array([1, 2, 3]))
    with pytest.raises(InputSchemaError, match=match):
        job.plan(src.parent, tmp_path / "out", encoder_bundle, config=config)
    with pytest.raises(InputSchemaError, match=match):
        job.score_partition(src.parent, tmp_path / "out", encoder_bundle, cpu(**config))
    assert not (tmp_path / "out").exists()


def test_a_second_file_with_another_id_type_fails_before_output(encoder_bundle, tmp_path):
    folder = tmp_path / "posts"
    write_posts(folder / "a.parquet", 2)
    pq.write_table(pa.table({"post_id": [7], "text": ["x"], "image": [b""]}), folder / "b.parquet")
    with pytest.raises(InputSchemaError, match=r"id column 'post_id' is int64 in .*b.parquet"):
        job.plan(folder, tmp_path / "out", encoder_bundle)
    assert not (tmp_path / "out").exists()


def test_a_bundle_without_head_fails_before_output(encoder_bundle, tmp_path):
    src = write_posts(tmp_path / "posts.parquet", 3)
    with pytest.raises(BundleError, match="ctmwa-export head"):
        job.plan(src, tmp_path / "out", encoder_bundle)
    assert not (tmp_path / "out").exists()
    assert (
        cli_main(["score", "--bundle", str(encoder_bundle), "--input", str(src), "--output", str(tmp_path / "out")])
        == 2
    )


def test_cuda_that_is_not_there_fails_before_output(encoder_bundle, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(ProviderUnavailable, match="cuda"):
        job.score_partition(
            write_posts(tmp_path / "p.parquet", 2), tmp_path / "out", encoder_bundle, ScoreConfig(device="cuda")
        )
    assert not (tmp_path / "out").exists()


def test_score_config_travels_as_json():
    config = ScoreConfig(device="cpu", batch_size=32, workers=3, passthrough=("lang",), scored_at=FIXED_TIME)
    assert ScoreConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert ScoreConfig.coerce(None) == ScoreConfig() and ScoreConfig.coerce({"batch_size": 8}).batch_size == 8
    with pytest.raises(ValueError, match=r"unknown score config key\(s\) \['batch'\]"):
        ScoreConfig.from_dict({"batch": 8})
    with pytest.raises(ValueError, match="batch_size 0"):
        ScoreConfig(batch_size=0)
    with pytest.raises(ValueError, match="not an ISO-8601 time"):
        ScoreConfig(scored_at="yesterday")
    assert ScoreConfig(workers=0).decode_workers == 0 and ScoreConfig(workers=3).decode_workers == 3


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 0), (4, 3), (16, 15)])
def test_default_decode_workers_follow_the_cores(monkeypatch, cores, workers):
    """One decode process per core but one; none on two cores or fewer, where decoding stays in the reader thread."""
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert ScoreConfig().decode_workers == workers


def test_progress_reports_rate_and_eta(caplog):
    caplog.set_level("INFO", logger="ctmwa_batch.progress")
    progress = Progress(1000, interval_s=0.0)
    progress.t0 -= 2.0  # as if it had run for two seconds
    progress.update(500)
    assert "scored 500/1,000 rows (50.0%)" in caplog.text and "rows/s, ETA 0m0" in caplog.text
    quiet = Progress(1000, interval_s=3600)
    caplog.clear()
    quiet.update(10)
    assert caplog.text == ""  # at most one line per interval
