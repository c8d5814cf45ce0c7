"""Other runtimes: the bundle's ONNX graphs run unchanged in OpenVINO (from its wheel) and agree with ONNX Runtime.

The three fp32 graphs of a tiny bundle built offline (tests/conftest.py full_bundle: the head with its folded
translators and masks, the image encoder taking uint8 pixels, the text encoder) run in OpenVINO's CPU plugin and in
ONNX Runtime on the same inputs, at batch sizes other than the export's.

Tolerances. Both runtimes compute in float32, but with different kernels: sums in another order, fused
multiply-adds or not, other exp/erf approximations. Each is held by the export to 1e-4 of PyTorch on every output
(ExportSpec.atol, on unit-scale values: L2-normalised embeddings, probabilities, weights, evidence), so two correct
runtimes are within 2e-4 of each other by the triangle inequality; that is the bound asserted, on any CPU. The
unbounded logits get the same bound relative to their scale. One thing would break this on some CPUs only: OpenVINO's
CPU plugin computes in bfloat16 by default where the CPU has AMX or AVX512-BF16 (8 bits of mantissa: errors near
4e-3), so the test asks for f32 (INFERENCE_PRECISION_HINT), as a user comparing runtimes must.

The head feeds one_hot(argmax logits) to its weight nets and evidence: on a row whose top two logits are closer than
the runtimes' difference, the class may flip between runtimes and those four outputs with it. Such rows (none are
expected on random inputs at float32) are left out of those outputs' comparison and counted, as the export does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from ctmwa_batch.model.bundle import HEAD, IMAGE_ENCODER, PIXELS, TEXT_ENCODER, load_bundle
from ctmwa_batch.model.preprocess import TextTokenizer
from ctmwa_batch.model.runtime import RuntimeConfig, create_session
from ctmwa_export.head import MASK_CASES, head_inputs

PAIR_ATOL = 2e-4  # two runtimes, each within the export's 1e-4 of PyTorch
BATCH_SIZES = (1, 3, 7)  # not the export's 2
ARGMAX_DEPENDENT = ("text_weight", "image_weight", "text_evidence", "image_evidence")
TEXTS = ["a sunny day at the beach", "worst service ever", "ok", "new phone, who dis", "so happy for you", "meh", "x"]


def openvino_run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Compile the ONNX file for OpenVINO's CPU plugin in float32 and run it once; outputs by name."""
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled.create_infer_request().infer(feeds)
    return {port.get_any_name(): np.asarray(value) for port, value in result.items()}


def onnxruntime_run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return create_session(path, RuntimeConfig(device="cpu", intra_op_threads=1)).run(feeds)


def assert_close(name: str, ort: np.ndarray, got: np.ndarray, atol: float) -> None:
    """Same shape and dtype, NaN (a missing modality's evidence) on the same elements, the rest within atol."""
    assert got.shape == ort.shape and got.dtype == ort.dtype, (name, got.shape, got.dtype, ort.shape, ort.dtype)
    assert (np.isnan(got) == np.isnan(ort)).all() and not np.isinf(got).any(), name
    both = ~np.isnan(ort)
    diff = float(np.max(np.abs(got[both].astype(np.float64) - ort[both]), initial=0.0))
    assert diff <= atol, f"{name}: OpenVINO vs ONNX Runtime max |diff| {diff:.3g} > {atol:.3g}"


@pytest.fixture(scope="module")
def bundle(full_bundle):
    return load_bundle(full_bundle)


@pytest.mark.parametrize("n", BATCH_SIZES)
def test_image_encoder_in_openvino(bundle, n):
    spec = bundle.image_spec
    pixels = np.random.default_rng(n).integers(0, 256, (n, spec.size, spec.size, 3), dtype=np.uint8)
    path = bundle.root / IMAGE_ENCODER
    feeds = {PIXELS: pixels}
    ort, got = onnxruntime_run(path, feeds), openvino_run(path, feeds)
    assert set(got) == set(ort) == {"image_emb"}
    assert_close("image_emb", ort["image_emb"], got["image_emb"], PAIR_ATOL)
    np.testing.assert_allclose(np.linalg.norm(got["image_emb"], axis=1), 1.0, atol=1e-5)  # L2-normalised


@pytest.mark.parametrize("n", BATCH_SIZES)
def test_text_encoder_in_openvino(bundle, n):
    tokens = TextTokenizer(bundle.root / "tokenizer.json", bundle.text_spec).encode(TEXTS[:n])
    feeds = {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask}
    path = bundle.root / TEXT_ENCODER
    ort, got = onnxruntime_run(path, feeds), openvino_run(path, feeds)
    assert set(got) == set(ort) == {"text_emb"}
    assert_close("text_emb", ort["text_emb"], got["text_emb"], PAIR_ATOL)


@pytest.mark.parametrize("case", list(MASK_CASES))
@pytest.mark.parametrize("n", BATCH_SIZES)
def test_head_in_openvino(bundle, n, case):
    dims = bundle.manifest["dims"]
    feeds = head_inputs(n, case, text_dim=dims["text_emb"], image_dim=dims["image_emb"], seed=11)
    path = bundle.root / HEAD
    ort, got = onnxruntime_run(path, feeds), openvino_run(path, feeds)
    assert set(got) == set(ort)
    scale = max(1.0, float(np.max(np.abs(ort["logits"]))))
    assert_close("logits", ort["logits"], got["logits"], PAIR_ATOL * scale)
    # rows where the two runtimes may disagree on the class: top-two logits closer than twice their difference
    top2 = np.sort(ort["logits"], axis=1)[:, -2:]
    logits_diff = np.max(np.abs(got["logits"] - ort["logits"]), axis=1)
    clear = (top2[:, 1] - top2[:, 0]) > 2 * logits_diff
    assert (~clear).sum() <= n // 7, f"{(~clear).sum()} of {n} rows at near-ties"
    for name in sorted(set(ort) - {"logits"}):
        rows = clear if name in ARGMAX_DEPENDENT else slice(None)
        assert_close(name, ort[name][rows], got[name][rows], PAIR_ATOL)
    assert (np.argmax(got["probs"][clear], axis=1) == np.argmax(ort["probs"][clear], axis=1)).all()


NODE_SCRIPT = """
const ort = require('onnxruntime-web');
const fs = require('fs');
(async () => {
  const [model, feedsPath] = process.argv.slice(2);
  const feeds = JSON.parse(fs.readFileSync(feedsPath, 'utf8'));
  const session = await ort.InferenceSession.create(fs.readFileSync(model));
  const inputs = {};
  for (const [name, f] of Object.entries(feeds)) {
    const data = f.type === 'bool' ? Uint8Array.from(f.data) : Float32Array.from(f.data);
    inputs[name] = new ort.Tensor(f.type, data, f.dims);
  }
  const out = await session.run(inputs);
  const result = {};
  for (const [name, t] of Object.entries(out)) result[name] = {dims: t.dims, data: Array.from(t.data)};
  console.log(JSON.stringify(result));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def test_head_in_onnxruntime_web_under_node(bundle, tmp_path):
    """Optional: onnxruntime-web (WebAssembly) under node, where both are installed; skipped elsewhere."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    probe = subprocess.run([node, "-e", "require.resolve('onnxruntime-web')"], capture_output=True, cwd=tmp_path)
    if probe.returncode != 0:
        pytest.skip("the npm package onnxruntime-web is not installed where node finds it")
    dims = bundle.manifest["dims"]
    feeds = head_inputs(7, "mixed", text_dim=dims["text_emb"], image_dim=dims["image_emb"], seed=11)
    as_json = {
        name: {"type": "bool" if a.dtype == bool else "float32", "dims": list(a.shape), "data": a.ravel().tolist()}
        for name, a in feeds.items()
    }
    (tmp_path / "feeds.json").write_text(json.dumps(as_json))
    (tmp_path / "run.js").write_text(NODE_SCRIPT)
    result = subprocess.run(
        [node, "run.js", str(bundle.root / HEAD), "feeds.json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    web = json.loads(result.stdout)
    ort = onnxruntime_run(bundle.root / HEAD, feeds)
    for name, value in ort.items():
        got = np.array([np.nan if v is None else v for v in web[name]["data"]], np.float32).reshape(web[name]["dims"])
        assert_close(name, value, got, PAIR_ATOL * (max(1.0, float(np.max(np.abs(value)))) if name == "logits" else 1))
