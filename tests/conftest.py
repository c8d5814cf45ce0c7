"""Shared fixtures: a tiny random CLIP built offline and its exported encoders bundle (built once per session).

Tests never touch a model hub: everything here is made from random weights on the spot.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random transformers CLIP (+ WordLevel tokenizer, CLIPImageProcessorPil config) saved to a folder."""
    from export.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip") / "clip", seed=0)


@pytest.fixture(scope="session")
def encoder_bundle(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An encoders-only model bundle (image_encoder.onnx, text_encoder.onnx, tokenizer.json, manifest.json) of the
    tiny CLIP, exported and validated the real way. Read-only: copy it (shutil.copytree) before changing it."""
    from export.encoders import EncoderExportConfig, export_encoders

    out = tmp_path_factory.mktemp("bundles") / "tiny_encoders"
    export_encoders(EncoderExportConfig(source=str(tiny_clip_dir), out_dir=out))
    return out
