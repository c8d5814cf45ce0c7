"""Which encoder variant a job runs: auto / named precisions, old fp32-only bundles, what scoring records."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctmwa_batch.config import JobConfig, ScoreConfig
from ctmwa_batch.errors import BundleError
from ctmwa_batch.model import bundle as B
from ctmwa_batch.model.precision import resolve_precision
from ctmwa_batch.model.runtime import RuntimeConfig
from ctmwa_batch.scoring.embed import Encoders, embed_posts
from ctmwa_batch.scoring.job import score_partition
from ctmwa_batch.settings import Settings, SettingsError
from tests.ctmwa_batch.scoring.test_score_job import posts_folder
from tests.ctmwa_batch.scoring.test_scorer import bad_rows

REPO = Path(__file__).resolve().parents[3]


def test_resolve_precision():
    every = ("fp32", "fp16", "int8")
    assert resolve_precision("auto", every, on_gpu=False) == "int8"
    assert resolve_precision("auto", every, on_gpu=True) == "fp16"
    assert resolve_precision("auto", ("fp32", "int8"), on_gpu=True) == "fp32"
    assert resolve_precision("auto", ("fp32",), on_gpu=False) == "fp32"
    assert resolve_precision("fp16", every, on_gpu=False) == "fp16"  # asked for by name: taken even on a CPU
    with pytest.raises(BundleError, match=r"has no int8 encoders; it has \['fp32', 'fp16'\]"):
        resolve_precision("int8", ("fp32", "fp16"), on_gpu=False)
    with pytest.raises(ValueError, match="bf16"):
        resolve_precision("bf16", every, on_gpu=False)


def _old_style_bundle(encoder_bundle: Path, dest: Path) -> Path:
    """The encoders bundle as written before precision variants existed: fp32 graphs only, no variant list."""
    shutil.copytree(encoder_bundle, dest)
    old = B.load_bundle(dest)
    for precision in ("fp16", "int8"):
        for name in B.encoder_files(precision).values():
            (dest / name).unlink()
    m = old.manifest
    B.write_manifest(
        dest,
        image=old.image_spec,
        text=old.text_spec,
        dims=m["dims"],
        encoder=m["encoder"],
        opset=m["opset"],
        graphs=m["graphs"],
        created_at=m["created_at"],
    )
    assert B.VARIANTS not in json.loads((dest / B.MANIFEST).read_text())
    return dest


def test_an_old_bundle_means_fp32_only(encoder_bundle, tmp_path, capsys, caplog):
    root = _old_style_bundle(encoder_bundle, tmp_path / "old")
    bundle = B.load_bundle(root)
    assert bundle.precisions == ("fp32",)
    assert bundle.encoder_paths("fp32") == (root / B.IMAGE_ENCODER, root / B.TEXT_ENCODER)
    with caplog.at_level("INFO", logger="ctmwa_batch.model.precision"):
        assert Encoders(bundle, RuntimeConfig(device="cpu"), "auto").precision == "fp32"
    assert "precision auto on cpu: fp32 encoders (bundle has ['fp32'])" in caplog.text
    with pytest.raises(BundleError, match=r"has no int8 encoders; it has \['fp32'\]"):
        Encoders(bundle, RuntimeConfig(device="cpu"), "int8")
    from ctmwa_batch.cli.main import main

    assert main(["inspect", str(root), "--format", "text"]) == 0
    assert "precisions    fp32 (no variant list: an fp32-only bundle)" in capsys.readouterr().out


def test_auto_takes_int8_on_cpu_and_inspect_lists_the_variants(encoder_bundle, capsys):
    bundle = B.load_bundle(encoder_bundle)
    encoders = Encoders(bundle, RuntimeConfig(device="cpu"), "auto")
    assert encoders.precision == "int8"
    assert Path(encoders.image_session.path).name == "image_encoder.int8.onnx"
    assert Path(encoders.text_session.path).name == "text_encoder.int8.onnx"
    fp16 = Encoders(bundle, RuntimeConfig(device="cpu"), "fp16")
    assert fp16.precision == "fp16" and fp16.image_session.path.name == "image_encoder.fp16.onnx"
    from ctmwa_batch.cli.main import main

    assert main(["inspect", str(encoder_bundle), "--format", "text"]) == 0
    out = capsys.readouterr().out
    assert "precisions    fp32, fp16, int8\n" in out
    assert "  int8  image_encoder.int8.onnx" in out and "min_cosine" in out
    assert main(["inspect", str(encoder_bundle)]) == 0
    assert set(json.loads(capsys.readouterr().out)[B.VARIANTS]) == {"fp32", "fp16", "int8"}


def test_a_variant_whose_checksum_in_the_list_differs_is_caught(encoder_bundle, tmp_path):
    root = Path(shutil.copytree(encoder_bundle, tmp_path / "b"))
    manifest = json.loads((root / B.MANIFEST).read_text())
    manifest[B.VARIANTS]["int8"]["files"]["image_encoder"]["sha256"] = "0" * 64
    (root / B.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="encoder variant int8: sha256 of image_encoder.int8.onnx differs"):
        B.load_bundle(root)


def test_fp32_and_int8_score_every_row_with_the_same_status(full_bundle, tmp_path):
    src = posts_folder(tmp_path / "posts", n=60, files=2, row_group_size=10)
    rows = bad_rows()  # every kind of bad post beside the good ones
    table = pa.table(
        {
            "post_id": [r[0] for r in rows],
            "text": [r[1] for r in rows],
            "image": pa.array([r[2] for r in rows], pa.binary()),
        }
    )
    pq.write_table(table, src / "part-9.parquet")
    results, tables = {}, {}
    for precision in ("fp32", "int8"):
        out = tmp_path / f"scores-{precision}"
        results[precision] = score_partition(
            src, out, full_bundle, ScoreConfig(device="cpu", workers=0, precision=precision)
        )
        tables[precision] = pq.read_table(results[precision]["output_dir"])  # rows in input order, same plan
        success = json.loads((Path(results[precision]["output_dir"]) / "_SUCCESS.json").read_text())
        assert success["runtime"] == {"precision": [precision], "provider": ["CPUExecutionProvider"]}
        assert results[precision]["runtime"]["precision"] == [precision]
    a, b = tables["fp32"], tables["int8"]
    assert a.num_rows == b.num_rows == 60 + len(rows)
    assert a.column("post_id").to_pylist() == b.column("post_id").to_pylist()
    assert a.column("status").to_pylist() == b.column("status").to_pylist()
    assert set(a.column("status").to_pylist()) == {"ok", "image_missing", "text_missing", "no_content", "error"}
    assert a.column("has_image").to_pylist() == b.column("has_image").to_pylist()
    # Not equal numbers, but the same predictions on nearly every row (README "Precision" has the measured agreement).
    same = np.mean([x == y for x, y in zip(a.column("sentiment").to_pylist(), b.column("sentiment").to_pylist())])
    assert same >= 0.9


def test_auto_scoring_on_cpu_records_int8(full_bundle, tmp_path):
    src = posts_folder(tmp_path / "posts", n=20, files=1, row_group_size=10)
    result = score_partition(src, tmp_path / "out", full_bundle, ScoreConfig(device="cpu", workers=0))
    assert result["runtime"]["precision"] == ["int8"]


def test_a_cli_asking_for_a_variant_the_bundle_lacks_names_the_ones_it_has(encoder_bundle, tmp_path, capsys):
    old = _old_style_bundle(encoder_bundle, tmp_path / "old")
    src = posts_folder(tmp_path / "posts", n=10, files=1, row_group_size=10)
    from ctmwa_batch.cli.main import main

    code = main(
        [
            "embed",
            "--bundle",
            str(old),
            "--input",
            str(src),
            "--output",
            str(tmp_path / "f.parquet"),
            "--precision",
            "fp16",
        ]
    )
    assert code == 2
    assert "has no fp16 encoders; it has ['fp32']" in capsys.readouterr().err
    assert not (tmp_path / "f.parquet").exists()


def test_embed_defaults_to_fp32_and_records_the_precision(encoder_bundle, tmp_path):
    src = posts_folder(tmp_path / "posts", n=12, files=1, row_group_size=12)
    default = embed_posts(encoder_bundle, src, tmp_path / "a.parquet")
    assert default["precision"] == "fp32"
    int8 = embed_posts(encoder_bundle, src, tmp_path / "b.parquet", precision="int8")
    assert int8["precision"] == "int8"
    meta = json.loads(pq.read_schema(tmp_path / "b.parquet").metadata[b"ctmwa_batch.scoring.embed"])
    assert meta["precision"] == "int8"


def test_settings_precision():
    assert Settings.load({}).precision == "auto"
    assert Settings.load({"CTMWA_PRECISION": "int8"}).precision == "int8"
    assert Settings.load({}, overrides={"precision": "fp16"}).precision == "fp16"
    with pytest.raises(SettingsError, match="CTMWA_PRECISION"):
        Settings.load({"CTMWA_PRECISION": "int4"})
    from ctmwa_batch.scoring.orchestrate import score_config

    assert JobConfig.from_dict(score_config(Settings.load({"CTMWA_PRECISION": "fp32"}))).score.precision == "fp32"
    assert Settings.load({"CTMWA_PRECISION": "int8"}).score_config().precision == "int8"


def _events_in_a_fresh_process(graph: Path, device: str) -> list[list[str]]:
    code = (
        "import json, sys; from ctmwa_batch.model import runtime; "
        f"runtime.create_session({str(graph)!r}, runtime.RuntimeConfig(device={device!r})); "
        "print(json.dumps(list(runtime.EVENTS)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_preload_dlls_runs_before_the_first_session_that_may_use_cuda(encoder_bundle):
    graph = encoder_bundle / B.IMAGE_ENCODER
    # auto may open CUDA: the CUDA libraries are preloaded (onnxruntime.preload_dlls) before the session, once.
    events = _events_in_a_fresh_process(graph, "auto")
    assert events[0] == ["preload_dlls", "called"]
    assert events[1][:2] == ["session", "image_encoder.onnx"]
    # cpu never touches CUDA.
    assert _events_in_a_fresh_process(graph, "cpu") == [["session", "image_encoder.onnx", "CPUExecutionProvider"]]


@pytest.mark.gpu
def test_cuda_auto_takes_fp16_after_preloading(encoder_bundle):
    from ctmwa_batch.model.runtime import CUDA, EVENTS, import_onnxruntime

    if CUDA not in import_onnxruntime().get_available_providers():
        pytest.skip("needs onnxruntime-gpu and a CUDA device")
    encoders = Encoders(B.load_bundle(encoder_bundle), RuntimeConfig(device="cuda"), "auto")
    assert encoders.precision == "fp16"
    assert encoders.image_session.provider == CUDA
    names = [e[0] for e in EVENTS]
    assert "preload_dlls" in names and names.index("preload_dlls") < len(names) - 1
    emb = encoders.encode_pixels(np.zeros((3, 32, 32, 3), np.uint8), np.ones(3, bool))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-2)
