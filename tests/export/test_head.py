"""Head export: graph contract, parity with PyTorch under every mask combination, bundle assembly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctmwa_batch.bundle import HEAD, load_bundle
from ctmwa_batch.runtime import RuntimeConfig, create_session
from export.head import HEAD_INPUTS, HEAD_OUTPUTS


def test_full_bundle_has_head_and_manifest(full_bundle):
    bundle = load_bundle(full_bundle)
    assert bundle.has_head and bundle.has_encoders
    assert bundle.labels == ["positive", "neutral", "negative"]
    assert bundle.dims == {"text_emb": 16, "image_emb": 16, "classes": 3}
    m = bundle.manifest
    assert m["calibration"] == {"method": "none", "temperature": 1.0}
    assert m["head"]["precision"] == "fp32"
    assert m["training_metrics"]["epochs"] == 3 and "history" not in m["training_metrics"]
    session = create_session(bundle.path(HEAD), RuntimeConfig(device="cpu"))
    assert session.input_names == list(HEAD_INPUTS) and session.output_names == list(HEAD_OUTPUTS)
