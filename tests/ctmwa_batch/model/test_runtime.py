"""ONNX Runtime sessions: provider choice, no silent CPU fallback, IO binding."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ctmwa_batch.errors import ProviderUnavailable
from ctmwa_batch.model.bundle import IMAGE_ENCODER, PIXELS, load_bundle
from ctmwa_batch.model.runtime import CPU, RuntimeConfig, create_session, import_onnxruntime

ort = pytest.importorskip("onnxruntime")
NO_CUDA = "CUDAExecutionProvider" not in ort.get_available_providers()


@pytest.fixture(scope="module")
def image_graph(encoder_bundle):
    return load_bundle(encoder_bundle).path(IMAGE_ENCODER)


@pytest.mark.skipif(not NO_CUDA, reason="CUDA is available here")
def test_cuda_requested_without_cuda_is_an_error(image_graph):
    with pytest.raises(ProviderUnavailable, match=r"ctmwa-batch\[gpu\]"):
        create_session(image_graph, RuntimeConfig(device="cuda"))


@pytest.mark.skipif(not NO_CUDA, reason="CUDA is available here")
def test_cuda_fallback_after_session_creation_is_an_error(image_graph, monkeypatch):
    """onnxruntime-gpu present but CUDA libraries missing: the session silently lands on CPU; we refuse it."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", CPU])
    real = ort.InferenceSession

    def cpu_only(path, sess_options=None, providers=None):
        return real(path, sess_options=sess_options, providers=[CPU])

    monkeypatch.setattr(ort, "InferenceSession", cpu_only)
    with pytest.raises(ProviderUnavailable, match="CUDA libraries"):
        create_session(image_graph, RuntimeConfig(device="cuda"))


def test_auto_takes_cpu_here_and_logs_it(image_graph, caplog):
    caplog.set_level("INFO", logger="ctmwa_batch.model.runtime")
    model = create_session(image_graph, RuntimeConfig(device="auto"))
    assert model.provider == (CPU if NO_CUDA else "CUDAExecutionProvider")
    assert "image_encoder.onnx runs on" in caplog.text


def test_thread_setting_and_run(image_graph):
    model = create_session(image_graph, RuntimeConfig(device="cpu", intra_op_threads=1))
    assert model.session.get_session_options().intra_op_num_threads == 1
    out = model.run({PIXELS: np.zeros((2, 32, 32, 3), np.uint8)})
    assert list(out) == ["image_emb"] and out["image_emb"].shape == (2, 16)
    with pytest.raises(ValueError, match="takes inputs"):
        model.run({"pixel_values": np.zeros((2, 32, 32, 3), np.uint8)})


def test_io_binding_gives_the_same_result(image_graph):
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    plain = create_session(image_graph, RuntimeConfig(device="cpu", io_binding=False)).run({PIXELS: pixels})
    bound = create_session(image_graph, RuntimeConfig(device="cpu", io_binding=True)).run({PIXELS: pixels})
    np.testing.assert_array_equal(plain["image_emb"], bound["image_emb"])


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ProviderUnavailable, match=r"ctmwa-batch\[cpu\].*ctmwa-batch\[gpu\]"):
        import_onnxruntime()


def test_unknown_device():
    with pytest.raises(ValueError, match="device 'tpu'"):
        RuntimeConfig(device="tpu")


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA, reason="needs onnxruntime-gpu and a CUDA GPU")
def test_cuda_session_with_io_binding(image_graph):
    model = create_session(image_graph, RuntimeConfig(device="cuda"))
    assert model.on_gpu and model.io_binding
    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    ref = create_session(image_graph, RuntimeConfig(device="cpu")).run({PIXELS: pixels})["image_emb"]
    np.testing.assert_allclose(model.run({PIXELS: pixels})["image_emb"], ref, atol=1e-3)
