"""Backfills at the cost of the head (ctmwa_batch.scoring.embeddings): embeddings kept with the scores, a second head that
rescores from them without an encoder session (statuses and errors of a full rescoring, probabilities within the
float16 tolerance derived below), refusals (other encoders, a changed partition, --no-embedding-reuse), and each
distinct image encoded once with the scores of a run without reuse."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctmwa_batch import schema
from ctmwa_batch.cli.main import main as cli_main
from ctmwa_batch.io import partitions
from ctmwa_batch.model.bundle import HEAD, load_bundle
from ctmwa_batch.model.runtime import RuntimeConfig, create_session
from ctmwa_batch.scoring import embed, embeddings, job
from tests import images
from tests.ctmwa_batch.cli.test_score import FIXED_TIME, cpu, write_posts
from tests.ctmwa_batch.scoring.test_scorer import bad_rows

PARTITION = "dt=2026-11-26"


# --------------------------------------------------------------------------------------------------- bundles


@pytest.fixture(scope="module")
def second_head(tiny_checkpoint, encoder_bundle, tiny_features, tmp_path_factory) -> Path:
    """Another head over the same encoders (the encoder files are byte-identical): the tiny CTMWA exported with a
    temperature fitted on the features, so its probabilities differ from full_bundle's."""
    from ctmwa_export.assemble import export_head
    from ctmwa_export.head import HeadExportConfig

    out = tmp_path_factory.mktemp("bundles") / "second_head"
    return export_head(
        tiny_checkpoint, encoder_bundle, out, HeadExportConfig(calibrate=True, features=Path(tiny_features))
    )


@pytest.fixture(scope="module")
def other_encoders(tiny_checkpoint, tmp_path_factory) -> Path:
    """The same head over a second encoder export (a tiny CLIP with other random weights, fp32 only)."""
    from ctmwa_export.assemble import export_encoders, export_head
    from ctmwa_export.encoders import EncoderExportConfig
    from fixtures.clip import build_tiny_clip

    base = tmp_path_factory.mktemp("other_encoders")
    clip = build_tiny_clip(base / "clip", seed=1)
    export_encoders(EncoderExportConfig(source=str(clip), out_dir=base / "encoders", precisions=("fp32",)))
    return export_head(tiny_checkpoint, base / "encoders", base / "bundle")


# --------------------------------------------------------------------------------------------------- posts


def mixed_posts(root: Path) -> Path:
    """A partition of two files: every kind of bad row (statuses, errors, duplicate ids, a null id) and good posts
    whose images repeat; small row groups, so shards and batches cut across the files."""
    folder = root / "posts" / PARTITION
    folder.mkdir(parents=True)
    rows = bad_rows()
    pq.write_table(
        pa.table(
            {
                "post_id": pa.array([r[0] for r in rows], pa.string()),
                "text": pa.array([r[1] for r in rows], pa.string()),
                "image": pa.array([r[2] for r in rows], pa.binary()),
            }
        ),
        folder / "part-0.parquet",
        row_group_size=4,
    )
    write_posts(folder / "part-1.parquet", 21, row_group_size=5, start=100)
    return folder


def read_scores(out_dir: Path) -> pa.Table:
    """A committed partition's rows in input order (the parts _SUCCESS.json lists, in shard order)."""
    success = json.loads((out_dir / partitions.SUCCESS).read_text())
    return pa.concat_tables([pq.read_table(out_dir / part) for part in success["parts"]])


def success_of(out_dir: Path) -> dict:
    return json.loads((out_dir / partitions.SUCCESS).read_text())


def out_dir(root: Path, bundle: Path) -> Path:
    return root / f"model_version={load_bundle(bundle).model_version}" / PARTITION


@pytest.fixture
def encoder_sessions(monkeypatch) -> list[str]:
    """Names of the encoder graphs each ONNX Runtime session was created for (the real sessions, counted)."""
    created: list[str] = []

    def counting(path, runtime):
        created.append(Path(path).name)
        return create_session(path, runtime)

    monkeypatch.setattr(embed, "create_session", counting)
    return created


# --------------------------------------------------------------------------------------------------- tolerance


def probability_tolerance(bundle: Path, text_emb: np.ndarray, image_emb: np.ndarray, masks: tuple) -> float:
    """The largest change float16 storage may cause in a probability, for this head on these rows.

    Storing an L2-normalised embedding x in float16 moves each component by at most u|x_i| (u = 2^-11, float16's unit
    roundoff), so ||fp16(x) - x|| <= u, and <= u*sqrt(2) for the text and image pair. A softmax output moves by at
    most half the largest logit change (|dp_k| = |sum_j p_k (d_kj - p_j) dz_j| <= 2 p_k (1 - p_k) max|dz| <= max|dz|/2).
    The logits move by at most G times the input change, G the head's gain: measured here at every row along 16
    random directions plus the direction float16 actually moved it, by central differences in float64 of a float32
    graph (steps of 1e-3, far above float32's rounding), with a factor 2 for the directions not tried.
    Then |dp| <= G * u * sqrt(2) / 2 * 2, plus float32's own rounding of the two head runs (1e-6)."""
    session = create_session(load_bundle(bundle).path(HEAD), RuntimeConfig(device="cpu", intra_op_threads=1))
    has_text, has_image = masks
    rng = np.random.default_rng(0)
    step = 1e-3

    def logits(t: np.ndarray, v: np.ndarray) -> np.ndarray:
        feeds = {
            schema.TEXT_EMB: t.astype(np.float32),
            schema.IMAGE_EMB: v.astype(np.float32),
            schema.HAS_TEXT: has_text,
            schema.HAS_IMAGE: has_image,
        }
        return np.asarray(session.run({k: np.ascontiguousarray(x) for k, x in feeds.items()})["logits"], np.float64)

    x = np.concatenate([text_emb, image_emb], axis=1).astype(np.float64)
    moved = np.concatenate([text_emb.astype(np.float16), image_emb.astype(np.float16)], axis=1).astype(np.float64)
    directions = [moved - x, *(rng.standard_normal(x.shape) for _ in range(16))]
    d_t = text_emb.shape[1]
    gain = 0.0
    for d in directions:
        norms = np.linalg.norm(d, axis=1, keepdims=True)
        d = np.where(norms > 0, d / np.where(norms > 0, norms, 1), 0)
        up, down = x + step * d, x - step * d
        dz = logits(up[:, :d_t], up[:, d_t:]) - logits(down[:, :d_t], down[:, d_t:])
        gain = max(gain, float(np.abs(dz).max() / (2 * step)))
    u = embeddings.FLOAT16_UNIT_ROUNDOFF
    return 2 * gain * u * np.sqrt(2) / 2 + 1e-6


# --------------------------------------------------------------------------------------------------- tests


def test_a_second_head_rescores_from_kept_embeddings_without_an_encoder(
    full_bundle, second_head, tmp_path, capsys, encoder_sessions, caplog
):
    src = mixed_posts(tmp_path)
    lake = tmp_path / "scores"
    common = ["--input", str(src), "--output", str(lake), "--device", "cpu", "--threads", "1", "--workers", "0"]
    common += ["--precision", "fp32", "--batch-size", "6", "--scored-at", FIXED_TIME]
    # The first head keeps its embeddings (three shards: the kept parts cut across the input files).
    assert (
        cli_main(["score", "--bundle", str(full_bundle), *common, "--max-rows-per-shard", "16", "--keep-embeddings"])
        == 0
    )
    first = json.loads(capsys.readouterr().out)
    kept_at = out_dir(lake, full_bundle)
    kept = success_of(kept_at)["embeddings"]
    assert first["source"] == "posts" and len(kept["parts"]) == 3 and kept["rows"] == 40
    assert kept["encoders"]["precision"] == "fp32" and kept["encoders"]["files"]["image_encoder.onnx"]
    rows = pa.concat_tables([pq.read_table(kept_at / p["part"]) for p in kept["parts"]])
    assert rows.column(schema.ROW).to_pylist() == list(range(40))
    assert rows.schema.field(schema.TEXT_EMB).type == pa.list_(pa.float16())
    assert rows.column("post_id").to_pylist() == [r[0] for r in bad_rows()] + [f"p{100 + i}" for i in range(21)]
    assert rows.column(schema.TEXT_EMB).null_count == sum(1 for r in bad_rows() if not (r[1] or "").strip())
    assert kept["bytes_per_row"] > 2 * 16 * 2  # the two float16 vectors at least

    # The second head, same encoders: the head alone, one shard whose rows span the three kept parts.
    encoder_sessions.clear()
    with caplog.at_level(logging.INFO, logger="ctmwa_batch.scoring.job"):
        assert cli_main(["score", "--bundle", str(second_head), *common]) == 0
    head_only = json.loads(capsys.readouterr().out)
    assert encoder_sessions == []  # no ONNX Runtime session of an encoder was created
    assert head_only["source"] == "embeddings" and head_only["encoder_sessions"] == 0
    assert head_only["embeddings_source"]["location"] == kept["location"]
    assert "scoring from the embeddings kept at" in caplog.text
    assert success_of(out_dir(lake, second_head))["source"] == "embeddings"

    # The same head rescoring everything through the encoders, for comparison.
    full_lake = tmp_path / "full"
    common[common.index(str(lake))] = str(full_lake)
    assert cli_main(["score", "--bundle", str(second_head), *common, "--no-embedding-reuse"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["source"] == "posts" and full["encoder_sessions"] > 0 and encoder_sessions

    a, b = read_scores(out_dir(lake, second_head)), read_scores(out_dir(full_lake, second_head))
    for column in ("post_id", "status", "error", "has_text", "has_image", "text_sentiment", "image_sentiment"):
        assert a.column(column).to_pylist() == b.column(column).to_pylist(), column
    labels = [f"prob_{k}" for k in load_bundle(second_head).labels]
    pa_probs = np.array([a.column(k).to_numpy(zero_copy_only=False) for k in labels], dtype=np.float64).T
    pb_probs = np.array([b.column(k).to_numpy(zero_copy_only=False) for k in labels], dtype=np.float64).T
    scored = ~np.isnan(pb_probs[:, 0])
    assert np.array_equal(scored, ~np.isnan(pa_probs[:, 0])) and scored.sum() > 20
    # the tolerance for these rows: their float32 embeddings (the kept ones are their float16 roundings)
    t32 = embeddings.float32_matrix(rows.column(schema.TEXT_EMB), 16)
    v32 = embeddings.float32_matrix(rows.column(schema.IMAGE_EMB), 16)
    has_t = rows.column(schema.HAS_TEXT).to_numpy(zero_copy_only=False)
    has_v = rows.column(schema.HAS_IMAGE).to_numpy(zero_copy_only=False)
    tol = probability_tolerance(second_head, t32[scored], v32[scored], (has_t[scored], has_v[scored]))
    diff = np.abs(pa_probs[scored] - pb_probs[scored]).max()
    assert 0 < diff <= tol, (diff, tol)
    # a sentiment can only change where the full rescoring's top two probabilities are within 2 tol of each other
    top2 = np.sort(pb_probs[scored], axis=1)[:, -2:]
    clear = np.flatnonzero(scored)[top2[:, 1] - top2[:, 0] > 2 * tol]
    assert len(clear) > 20
    assert [a.column("sentiment")[int(i)].as_py() for i in clear] == [
        b.column("sentiment")[int(i)].as_py() for i in clear
    ]


def test_other_encoders_a_changed_partition_or_no_reuse_run_the_encoders(
    full_bundle, second_head, other_encoders, tmp_path, caplog
):
    src = mixed_posts(tmp_path)
    lake = tmp_path / "scores"
    config = {"precision": "fp32", "batch_size": 8, "scored_at": FIXED_TIME}
    first = job.score_partition(src, lake, full_bundle, cpu(keep_embeddings=True, **config))
    assert first["source"] == "posts" and first["embeddings"]["rows"] == 40

    # A bundle whose encoders are another export: same head, same labels, its own encoder files.
    assert load_bundle(other_encoders).files["head.onnx"] == load_bundle(full_bundle).files["head.onnx"]
    with caplog.at_level(logging.INFO, logger="ctmwa_batch.scoring.embeddings"):
        other = job.score_partition(src, lake, other_encoders, cpu(**config))
    assert other["source"] == "posts" and other["encoder_sessions"] > 0
    assert "not used: other encoders made them" in caplog.text

    # Refused on request.
    refused = job.score_partition(src, tmp_path / "refused", second_head, cpu(embedding_reuse=False, **config))
    assert refused["source"] == "posts"
    assert job.score_partition(src, lake, second_head, cpu(embedding_reuse=False, **config))["source"] == "posts"

    # A file rewritten in place (same bytes and size, only its time says so), then late rows: never stale.
    again = cpu(overwrite=True, **config)
    part = src / "part-1.parquet"
    os.utime(part, ns=(part.stat().st_atime_ns, part.stat().st_mtime_ns + 5_000_000_000))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ctmwa_batch.scoring.embeddings"):
        assert job.score_partition(src, lake, second_head, again)["source"] == "posts"
    assert "was rewritten since" in caplog.text
    write_posts(src / "part-2.parquet", 3, start=500)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ctmwa_batch.scoring.embeddings"):
        late = job.score_partition(src, lake, second_head, again)
    assert late["source"] == "posts" and late["rows"]["output"] == 43
    assert "the posts partition changed since" in caplog.text


def test_repeated_images_are_encoded_once_and_score_as_without_reuse(full_bundle, tmp_path, monkeypatch):
    """40 posts, 30% of them repeats of another post's image (a bad image among the repeated ones)."""
    distinct = [images.jpeg(48, 40, seed=s) for s in range(27)] + [images.random_bytes(seed=9)]
    rng = np.random.default_rng(0)
    repeats = [distinct[k] for k in rng.integers(0, len(distinct), 12)]
    order = rng.permutation(40)
    pics = [(distinct + repeats)[k] for k in order]
    folder = tmp_path / "posts" / PARTITION
    folder.mkdir(parents=True)
    pq.write_table(
        pa.table({"post_id": [f"r{i}" for i in range(40)], "text": ["so happy"] * 40, "image": pics}),
        folder / "part-0.parquet",
        row_group_size=10,
    )
    encoded: list[int] = []
    real = embed.Encoders.encode_pixels

    def counting(self, pixels, ok):
        encoded.append(int(np.asarray(ok).sum()))
        return real(self, pixels, ok)

    monkeypatch.setattr(embed.Encoders, "encode_pixels", counting)
    config = {"precision": "fp32", "batch_size": 8, "scored_at": FIXED_TIME, "max_rows_per_shard": 20}
    reused = job.score_partition(folder, tmp_path / "reuse", full_bundle, cpu(**config))
    assert sum(encoded) == 27  # the 28 distinct images, less the one that is not an image
    assert reused["images"] == {"images": 40, "encoded": 28, "reused": 12}
    encoded.clear()
    plain = job.score_partition(folder, tmp_path / "plain", full_bundle, cpu(embedding_reuse=False, **config))
    assert sum(encoded) == 40 - pics.count(distinct[-1]) and "images" not in plain
    a = read_scores(out_dir(tmp_path / "reuse", full_bundle))
    b = read_scores(out_dir(tmp_path / "plain", full_bundle))
    assert a.column("status").to_pylist() == b.column("status").to_pylist()
    assert a.column("error").to_pylist() == b.column("error").to_pylist()
    assert a.column("status").to_pylist().count(schema.STATUS_IMAGE_MISSING) == pics.count(distinct[-1])
    for label in [f"prob_{k}" for k in load_bundle(full_bundle).labels]:
        # fp32 encoders give an image the same embedding up to float32 rounding whatever shares its batch (a CPU's
        # kernels may block a GEMM by batch size, so not bit for bit on every CPU); another image's embedding, the
        # bug this guards against, moves a probability by orders of magnitude more than 1e-5
        np.testing.assert_allclose(
            a.column(label).to_numpy(zero_copy_only=False), b.column(label).to_numpy(zero_copy_only=False), atol=1e-5
        )


def test_the_backfill_tasks_and_settings_take_both(full_bundle, second_head, tmp_path):
    """What score_range's tasks run (orchestrate.plan_backfill / score_days), with the settings as a run's params
    and CTMWA_* variables give them."""
    from ctmwa_batch.airflow.operators import SCORING_OPTIONS
    from ctmwa_batch.scoring import orchestrate
    from ctmwa_batch.settings import Settings

    assert {"keep_embeddings", "embedding_reuse"} <= set(SCORING_OPTIONS)
    # the plugin's TaskGroup factories take both (read from the source: Airflow is imported only in subprocesses)
    import ast

    tree = ast.parse((Path(__file__).resolve().parents[3] / "ctmwa_batch" / "airflow" / "group.py").read_text())
    factories = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    for name in ("score_partition", "score_range"):
        assert {"keep_embeddings", "embedding_reuse"} <= {a.arg for a in factories[name].args.kwonlyargs}, name
    env = Settings.load({"CTMWA_KEEP_EMBEDDINGS": "true", "CTMWA_EMBEDDING_REUSE": "false"}).job_config()
    assert (env.keep_embeddings, env.embedding_reuse) == (True, False)
    days = ["2026-11-25", "2026-11-26"]
    for k, day in enumerate(days):
        write_posts(tmp_path / "posts" / f"dt={day}" / "part-0.parquet", 6, start=10 * k)
    params = {
        "input_root": str(tmp_path / "posts"),
        "output_root": str(tmp_path / "scores"),
        "device": "cpu",
        "precision": "fp32",
        "start_date": days[0],
        "end_date": days[1],
    }
    plan = orchestrate.plan_backfill({**params, "keep_embeddings": True}, bundle=str(full_bundle))
    first = orchestrate.score_days(plan, days)
    assert [d["source"] for d in first] == ["posts", "posts"]
    plan = orchestrate.plan_backfill(params, bundle=str(second_head))
    second = orchestrate.score_days(plan, days)
    assert [d["source"] for d in second] == ["embeddings", "embeddings"]
    plan = orchestrate.plan_backfill({**params, "embedding_reuse": False, "overwrite": True}, bundle=str(second_head))
    assert [d["source"] for d in orchestrate.score_days(plan, days)] == ["posts", "posts"]


def test_a_backfill_hashes_an_unchanged_bundle_once(full_bundle, tmp_path, monkeypatch):
    """load_bundle remembers the sha256 of files unchanged since it hashed them (a backfill loads the bundle once a
    day); a file changed since, even to the same size, is hashed again and fails verification."""
    import shutil

    from ctmwa_batch.errors import BundleError
    from ctmwa_batch.model import bundle as bundle_module

    copy = tmp_path / "bundle"
    shutil.copytree(full_bundle, copy)
    old = time_ns_ago(10)
    for f in copy.iterdir():
        os.utime(f, ns=(old, old))
    hashed: list[str] = []
    real = bundle_module.sha256_file

    def counting(path):
        hashed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(bundle_module, "sha256_file", counting)
    load_bundle(copy)
    first = len(hashed)
    assert first == len(load_bundle(copy).files)
    load_bundle(copy)
    assert len(hashed) == first  # nothing hashed again
    head = copy / "head.onnx"
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF
    head.write_bytes(bytes(data))  # same size, new bytes: its time changed
    with pytest.raises(BundleError, match="head.onnx: changed"):
        load_bundle(copy)
    # a file written moments before it was hashed is never remembered (a same-tick rewrite could keep its time)
    fresh = tmp_path / "fresh"
    shutil.copytree(full_bundle, fresh, copy_function=shutil.copyfile)  # new files, written now
    hashed.clear()
    load_bundle(fresh)
    load_bundle(fresh)
    assert len(hashed) == 2 * first


def time_ns_ago(seconds: float) -> int:
    import time

    return time.time_ns() - int(seconds * 1e9)


@pytest.fixture()
def s3_lake(s3_server, monkeypatch, tmp_path):
    """The session's S3 server (SeaweedFS) in this test's environment, with a fresh bucket."""
    import uuid

    from ctmwa_batch.io import storage
    from ctmwa_batch.model.bundle import ENV_CACHE

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(storage.ENV_OPTIONS, raising=False)
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "bundle-cache"))
    storage.configure(None)
    bucket = f"t-{uuid.uuid4().hex[:10]}"
    s3_server.create_bucket(bucket)
    yield bucket
    storage.configure(None)


def test_kept_embeddings_in_an_s3_lake_serve_the_second_head(s3_lake, full_bundle, second_head, tmp_path):
    """Posts, scores and kept embeddings in a real S3 server: the commit publishes the embeddings there, the second
    head finds them by listing the lake, and reads them (across two kept parts) instead of running the encoders."""
    import pyarrow.fs as pafs

    from ctmwa_batch.io import storage

    local = mixed_posts(tmp_path)
    src, lake = f"s3://{s3_lake}/posts/{PARTITION}", f"s3://{s3_lake}/scores"
    fs, _ = storage.open_filesystem(src)
    for f in sorted(local.iterdir()):
        pafs.copy_files(
            str(f), f"{s3_lake}/posts/{PARTITION}/{f.name}", pafs.LocalFileSystem(), destination_filesystem=fs
        )
    config = {"precision": "fp32", "batch_size": 8, "scored_at": FIXED_TIME}
    first = job.score_partition(src, lake, full_bundle, cpu(keep_embeddings=True, max_rows_per_shard=24, **config))
    assert first["embeddings"]["location"].startswith(f"s3://{s3_lake}/scores/model_version=")
    second = job.score_partition(src, lake, second_head, cpu(**config))
    assert second["source"] == "embeddings" and second["encoder_sessions"] == 0
    assert second["embeddings_source"]["location"] == first["embeddings"]["location"]
    assert second["rows"]["by_status"] == first["rows"]["by_status"]
