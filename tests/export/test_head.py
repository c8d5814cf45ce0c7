"""Head export: graph contract, semantics of missing modalities, fold, fp16, golden outputs, bundle assembly."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from ctmwa_batch.errors import BundleError, ExportValidationError
from ctmwa_batch.model.bundle import HEAD, load_bundle
from ctmwa_batch.model.runtime import RuntimeConfig, create_session
from ctmwa_export import head as H
from ctmwa_export.assemble import export_head
from ctmwa_export.cli import main as export_main
from ctmwa_training.model import CTMWA, CTMWAConfig, load_checkpoint, save_checkpoint

GOLDEN = Path(__file__).parent / "golden" / "head_golden.json"
CPU = RuntimeConfig(device="cpu")


def run_head(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return create_session(path, CPU).run({name: inputs[name] for name in H.HEAD_INPUTS})


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------- the bundle


def test_full_bundle_has_head_and_manifest(full_bundle, tiny_checkpoint):
    bundle = load_bundle(full_bundle)
    assert bundle.has_head and bundle.has_encoders
    assert sorted(bundle.files) == sorted(
        [
            "head.onnx",
            "image_encoder.onnx",
            "text_encoder.onnx",
            "tokenizer.json",
            "image_encoder.fp16.onnx",
            "text_encoder.fp16.onnx",
            "image_encoder.int8.onnx",
            "text_encoder.int8.onnx",
        ]
    )
    assert bundle.labels == ["positive", "neutral", "negative"]
    assert bundle.dims == {"text_emb": 16, "image_emb": 16, "classes": 3}
    m = bundle.manifest
    assert m["calibration"] == {"method": "none", "temperature": 1.0}
    assert m["head"]["precision"] == "fp32" and m["head"]["translators"].startswith("folded")
    assert m["head"]["validated_batch_sizes"] == [1, 3, 7, 1000]
    assert m["head"]["model_config"]["embed_dim"] == 8
    metrics = json.loads((tiny_checkpoint / "metrics.json").read_text())
    assert m["training_metrics"]["test_accuracy"] == metrics["test_accuracy"] and "history" not in m["training_metrics"]
    signature = m["graphs"][HEAD]
    assert list(signature["inputs"]) == list(H.HEAD_INPUTS) and list(signature["outputs"]) == list(H.HEAD_OUTPUTS)
    assert signature["inputs"]["has_text"]["dtype"] == "bool" and signature["outputs"]["probs"]["shape"][1] == 3
    session = create_session(bundle.path(HEAD), CPU)
    assert session.input_names == list(H.HEAD_INPUTS) and session.output_names == list(H.HEAD_OUTPUTS)


def test_encoder_files_and_preprocessing_are_the_encoder_bundles(full_bundle, encoder_bundle):
    full, enc = load_bundle(full_bundle), load_bundle(encoder_bundle)
    assert {k: v for k, v in full.files.items() if k != HEAD} == enc.files
    assert full.manifest["preprocessing"] == enc.manifest["preprocessing"]
    assert full.manifest["graphs"]["image_encoder.onnx"] == enc.manifest["graphs"]["image_encoder.onnx"]
    assert full.model_version != enc.model_version


def test_outputs_are_well_formed_for_every_mask_combination(full_bundle):
    rng = np.random.default_rng(5)
    n = 40
    inputs = {
        "text_emb": unit_rows(rng, n, 16),
        "image_emb": unit_rows(rng, n, 16),
        "has_text": np.arange(n) % 2 == 0,
        "has_image": np.arange(n) % 4 < 2,
    }
    out = run_head(full_bundle / HEAD, inputs)
    assert out["logits"].shape == (n, 3) and out["text_weight"].shape == (n,)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in out.values())
    for name in ("probs", "text_probs", "image_probs"):
        np.testing.assert_allclose(out[name].sum(axis=1), 1.0, atol=1e-5)
    assert ((out["text_weight"] > 0) & (out["text_weight"] < 1)).all() and (
        (out["image_weight"] > 0) & (out["image_weight"] < 1)
    ).all()
    np.testing.assert_allclose(out["probs"], torch.softmax(torch.from_numpy(out["logits"]), 1).numpy(), atol=1e-6)


def test_absent_embeddings_are_never_read_even_when_nan(full_bundle):
    # The scorer may leave NaN (or anything) where a modality is missing: such rows score as if it were zeros,
    # and a row with neither modality still gets finite numbers (the scorer marks it no_content).
    rng = np.random.default_rng(6)
    n = 12
    has_text, has_image = np.arange(n) % 2 == 0, np.arange(n) % 4 < 2
    text, image = unit_rows(rng, n, 16), unit_rows(rng, n, 16)
    clean = {
        "text_emb": np.where(has_text[:, None], text, 0),
        "image_emb": np.where(has_image[:, None], image, 0),
        "has_text": has_text,
        "has_image": has_image,
    }
    dirty = {
        **clean,
        "text_emb": np.where(has_text[:, None], text, np.nan).astype(np.float32),
        "image_emb": np.where(has_image[:, None], image, np.inf).astype(np.float32),
    }
    a, b = run_head(full_bundle / HEAD, clean), run_head(full_bundle / HEAD, dirty)
    for name in H.HEAD_OUTPUTS:
        assert np.isfinite(b[name]).all(), name
        np.testing.assert_allclose(b[name], a[name], atol=1e-6)


def evidence_by_hand(
    classifier: torch.nn.Linear, emb: torch.Tensor, predicted: torch.Tensor, neutral: int | None
) -> torch.Tensor:
    """p_c / (p_c + p_neutral) of the modality's evidence classifier on its raw embedding; p_c without a neutral
    class. Written from the probabilities, in float64 (where they do not underflow at these logits)."""
    p = classifier.double()(emb.double()).softmax(1)
    classifier.float()
    p_c = p[torch.arange(len(emb)), predicted]
    return (p_c if neutral is None else p_c / (p_c + p[:, neutral])).float()


def evidence_float64(
    weight: torch.Tensor, bias: torch.Tensor, emb: np.ndarray, predicted: np.ndarray, neutral: int
) -> np.ndarray:
    """sigmoid(l_c - l_neutral) in float64 from a checkpoint's evidence weights: p_c / (p_c + p_neutral), exactly."""
    logits = emb.astype(np.float64) @ weight.double().numpy().T + bias.double().numpy()  # (N, C)
    rows = np.arange(len(emb))
    return 1.0 / (1.0 + np.exp(-(logits[rows, predicted] - logits[rows, neutral])))


def float32_evidence_bound(
    weight: torch.Tensor, bias: torch.Tensor, emb: np.ndarray, predicted: np.ndarray, neutral: int
) -> np.ndarray:
    """Per row, how far a float32 graph's sigmoid(l_c - l_n) may lie from the float64 value on any CPU, whatever
    order its matrix product sums in: each logit is a sum of D + 1 products, off by at most gamma_(D+1) times the sum of
    their magnitudes (the standard bound, gamma_n = n u / (1 - n u), u = 2^-24); the sigmoid moves at most its slope
    (taken at the nearest point of the interval to 0) times that; plus 1e-6 for the sigmoid's own float32 rounding."""
    w, b = weight.double().numpy(), bias.double().numpy()
    x = emb.astype(np.float64)
    u = 2.0**-24
    gamma = (x.shape[1] + 1) * u / (1 - (x.shape[1] + 1) * u)
    magnitude = np.abs(x) @ np.abs(w).T + np.abs(b)  # (N, C): sum of |products| of each logit
    logits = x @ w.T + b
    rows = np.arange(len(x))
    d = logits[rows, predicted] - logits[rows, neutral]
    slack = gamma * (magnitude[rows, predicted] + magnitude[rows, neutral]) + u * np.abs(d)
    nearest = np.maximum(np.abs(d) - slack, 0.0)
    slope = np.exp(-nearest) / (1 + np.exp(-nearest)) ** 2
    return 1e-6 + slope * slack


def by_hand(
    model: CTMWA,
    t: torch.Tensor,
    image: torch.Tensor,
    bias: list[float],
    missing: str = "none",
    *,
    embeddings: tuple[torch.Tensor, torch.Tensor],
) -> dict[str, np.ndarray]:
    """DESIGN.md sections 3-4 written out from the model's modules: t lives in text_encoder space; the class bias
    moves the prediction (logits, probs, the weight nets' one-hot, the evidence's class); the weight nets still
    read the raw logits; the evidence reads the raw `embeddings` (text, image), never a translation, and a
    missing modality's evidence is 0."""
    ti, it = model.txt2img(t), model.img2txt(image)
    fused_t, fused_v = torch.cat([t, ti], 1), torch.cat([it, image], 1)
    m_t, m_v = model.txt_neck(fused_t), model.img_neck(fused_v)
    raw = model.m_c(torch.cat([m_t, m_v], 1))
    text_raw, image_raw = embeddings
    has_t = torch.full((len(t), 1), float(missing != "text"))
    has_v = torch.full((len(t), 1), float(missing != "image"))
    probe = model.probe(torch.cat([text_raw * has_t, image_raw * has_v, has_t, has_v], 1)).log_softmax(1)
    logits = raw + model.probe_weight * probe + torch.tensor(bias)  # the probe blend, then the class bias
    logits_t, logits_v = model.t_c(m_t), model.v_c(m_v)
    predicted = logits.argmax(1)
    one_hot = F.one_hot(predicted, logits.shape[1]).float()
    neutral = int(model.evidence_neutral.argmax()) if model.evidence_neutral.sum() > 0 else None
    text_evidence = evidence_by_hand(model.txt_e_c, text_raw, predicted, neutral) * (missing != "text")
    image_evidence = evidence_by_hand(model.img_e_c, image_raw, predicted, neutral) * (missing != "image")
    return {
        "logits": logits.numpy(),
        "probs": logits.softmax(1).numpy(),
        "text_probs": logits_t.softmax(1).numpy(),
        "image_probs": logits_v.softmax(1).numpy(),
        "text_weight": model.txt_w_net(torch.cat([one_hot, raw, logits_t, fused_t], 1)).numpy(),
        "image_weight": model.img_w_net(torch.cat([one_hot, raw, logits_v, fused_v], 1)).numpy(),
        "text_evidence": text_evidence.numpy(),
        "image_evidence": image_evidence.numpy(),
    }


@pytest.mark.parametrize("missing", ["text", "image", "none"])
def test_missing_modality_means_its_translation(full_bundle, tiny_checkpoint, missing):
    """has_text=false scores as PyTorch given img2txt(image) as the (encoded) text; has_image=false, txt2img(t) as the image."""
    model, _, extra = load_checkpoint(tiny_checkpoint)
    bias = extra["class_bias"]["bias"]
    assert load_bundle(full_bundle).manifest["head"]["class_bias"]["bias"] == bias
    rng = np.random.default_rng(7)
    n = 9
    text, image = unit_rows(rng, n, 16), unit_rows(rng, n, 16)
    feeds = {
        "text_emb": text,
        "image_emb": image,
        "has_text": np.full(n, missing != "text"),
        "has_image": np.full(n, missing != "image"),
    }
    got = run_head(full_bundle / HEAD, feeds)
    with torch.no_grad():
        text_t, image_t = torch.from_numpy(text), torch.from_numpy(image)
        if missing == "text":
            want = by_hand(
                model, model.img2txt(image_t), image_t, bias, missing, embeddings=(text_t, image_t)
            )  # the translated image stands in for the text
        elif missing == "image":
            t = model.text_encoder(text_t)
            want = by_hand(
                model, t, model.txt2img(t), bias, missing, embeddings=(text_t, image_t)
            )  # the translated text stands in for the image
        else:
            want = by_hand(model, model.text_encoder(text_t), image_t, bias, embeddings=(text_t, image_t))
    for name in H.HEAD_OUTPUTS:
        np.testing.assert_allclose(got[name], want[name], atol=2e-5, err_msg=name)
    # And the stand-in matters: the same rows with both modalities score differently.
    both = run_head(full_bundle / HEAD, {**feeds, "has_text": np.ones(n, bool), "has_image": np.ones(n, bool)})
    assert (missing == "none") == np.allclose(both["logits"], got["logits"], atol=1e-6)


# --------------------------------------------------------------------------------------------------- the graph


def test_folded_graph_has_no_attention(full_bundle):
    graph = onnx.load(str(full_bundle / HEAD)).graph
    ops = Counter(node.op_type for node in graph.node)
    # Three softmaxes: the outputs probs, text_probs and image_probs; the translators have none, and the evidence is
    # a sigmoid of a logit difference (a softmax there underflows at large logits).
    assert ops["Softmax"] == 3
    softmax_outputs = {node.output[0] for node in graph.node if node.op_type == "Softmax"}
    assert {"probs", "text_probs", "image_probs"} <= softmax_outputs
    assert not [i.name for i in graph.initializer if "self_attn" in i.name or "fc_q" in i.name or "fc_k" in i.name]


@pytest.mark.slow
def test_unfolded_export_keeps_the_attention_and_agrees(tiny_checkpoint, tmp_path):
    model, _, _ = load_checkpoint(tiny_checkpoint)
    config = H.HeadExportConfig(fold_translators=False, extra_batch_sizes=())
    report = H.export_head_graph(model, tmp_path / "unfolded.onnx", config)
    graph = onnx.load(str(report.path)).graph
    assert (
        Counter(node.op_type for node in graph.node)["Softmax"] == 3 + 3
    )  # three translator calls: img2txt, txt2img, img2txt
    assert max(report.max_abs_diff.values()) < 1e-5


def test_class_bias_and_temperature_move_logits_probs_and_prediction_together(tiny_checkpoint, tmp_path):
    """The probe blend and the class bias enter before softmax and argmax, the temperature after: argmax(logits) =
    argmax(probs) is the class the weight nets and the evidence see."""
    model, _, _ = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():  # the probe blend on, with a probe of its own: it is part of the answer's logits
        torch.manual_seed(5)
        model.probe.weight.normal_()
        model.probe_weight.fill_(0.7)
    bias, temperature = [0.0, 4.0, -1.0], 2.0
    report = H.export_head_graph(
        model, tmp_path / "biased.onnx", H.HeadExportConfig(extra_batch_sizes=()), temperature, bias
    )
    rng = np.random.default_rng(3)
    n = 30
    feeds = {
        "text_emb": unit_rows(rng, n, 16),
        "image_emb": unit_rows(rng, n, 16),
        "has_text": np.ones(n, bool),
        "has_image": np.ones(n, bool),
    }
    got = run_head(report.path, feeds)
    plain = run_head(
        H.export_head_graph(model, tmp_path / "plain.onnx", H.HeadExportConfig(extra_batch_sizes=())).path, feeds
    )
    np.testing.assert_allclose(got["logits"], plain["logits"] + np.array(bias, np.float32), atol=1e-5)
    np.testing.assert_allclose(
        got["probs"], torch.softmax(torch.from_numpy(got["logits"]) / temperature, 1).numpy(), atol=1e-6
    )
    assert (got["probs"].argmax(1) == got["logits"].argmax(1)).all()
    assert (got["probs"].argmax(1) == 1).sum() > (plain["probs"].argmax(1) == 1).sum()  # the bias moved predictions
    with torch.no_grad():
        text_t, image_t = torch.from_numpy(feeds["text_emb"]), torch.from_numpy(feeds["image_emb"])
        want = by_hand(model, model.text_encoder(text_t), image_t, bias, embeddings=(text_t, image_t))
    for name in ("text_weight", "image_weight", "text_evidence", "image_evidence"):
        np.testing.assert_allclose(got[name], want[name], atol=2e-5, err_msg=name)


def test_a_wrong_fold_is_caught_and_writes_no_bundle(tiny_checkpoint, encoder_bundle, tmp_path, monkeypatch):
    def skewed(self, x):
        return self.out(F.relu(self.conv(x))) * 1.01

    monkeypatch.setattr(H.FoldedTranslator, "forward", skewed)
    out = tmp_path / "out" / "bundle"
    with pytest.raises(ExportValidationError) as e:
        export_head(tiny_checkpoint, encoder_bundle, out, H.HeadExportConfig(extra_batch_sizes=()))
    assert "'head'" in str(e.value) and "max |onnxruntime - PyTorch|" in str(e.value)
    assert "batch 1, text+image" in str(e.value) or "batch 3, text+image" in str(e.value)
    assert not out.exists() and list(out.parent.iterdir()) == []  # no bundle, no staging left behind


def test_fp16_stays_within_tolerance(tiny_checkpoint, tmp_path):
    model, _, _ = load_checkpoint(tiny_checkpoint)
    config = H.HeadExportConfig(fp16=True, extra_batch_sizes=())  # 1000 rows are checked below
    report = H.export_head_graph(model, tmp_path / "head16.onnx", config)
    assert report.max_abs_diff["probs"] <= config.fp16_atol and report.max_abs_diff["logits"] <= config.fp16_logits_atol
    graph = onnx.load(str(report.path)).graph
    assert all(i.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL) for i in graph.input)
    weights = [i for i in graph.initializer if len(i.dims) == 2]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    inputs = H.head_inputs(1000, "mixed", text_dim=16, image_dim=16, seed=99)
    got = run_head(report.path, inputs)
    with torch.no_grad():
        want = H.CTMWAHead(model)(*(torch.from_numpy(inputs[n]) for n in H.HEAD_INPUTS))
    assert got["probs"].dtype == np.float32
    assert np.abs(got["probs"] - want["probs"].numpy()).max() <= config.fp16_atol
    assert (got["probs"].argmax(1) == want["probs"].numpy().argmax(1)).mean() >= 0.99


# --------------------------------------------------------------------------------------------------- golden


GOLDEN_CONFIG = CTMWAConfig(text_dim=16, image_dim=16, embed_dim=8, num_classes=3, weight_net_hidden=16)


def golden_model() -> CTMWA:
    """Weights from numpy's seeded generator (stable across torch versions), scaled like a fan-in init."""
    model = CTMWA(GOLDEN_CONFIG)
    rng = np.random.default_rng(20240601)
    state = {}
    for name, value in model.state_dict().items():
        if name in (
            "evidence_neutral",
            "probe_weight",
        ):  # flags, not weights; drawing them would shift every later draw
            continue
        fan_in = int(np.prod(value.shape[1:])) if value.dim() > 1 else 1
        scale = 1.0 / np.sqrt(fan_in) if value.dim() > 1 else 0.1
        state[name] = torch.from_numpy((rng.standard_normal(tuple(value.shape)) * scale).astype(np.float32))
    state["evidence_neutral"] = torch.tensor([0.0, 1.0, 0.0])  # "neutral" is class 1, as training marks it
    state["probe_weight"] = torch.zeros(1)  # the probe blend off: the paper's model alone
    model.load_state_dict(state)
    return model.eval()


def golden_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "text_emb": unit_rows(rng, 8, 16),
        "image_emb": unit_rows(rng, 8, 16),
        "has_text": np.array([1, 1, 0, 0, 1, 1, 0, 0], bool),
        "has_image": np.array([1, 0, 1, 0, 1, 0, 1, 0], bool),
    }


def test_golden_outputs(tmp_path):
    """A fixed checkpoint and fixed inputs give the stored outputs (regenerate: CTMWA_REGEN_GOLDEN=1 pytest -k golden)."""
    save_checkpoint(golden_model(), GOLDEN_CONFIG, tmp_path / "ck", {"labels": ["positive", "neutral", "negative"]})
    model, _, _ = load_checkpoint(tmp_path / "ck")
    report = H.export_head_graph(model, tmp_path / "head.onnx", H.HeadExportConfig(extra_batch_sizes=()))
    got = run_head(report.path, golden_inputs())
    if os.environ.get("CTMWA_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        payload = {
            "inputs": {k: v.tolist() for k, v in golden_inputs().items()},
            "outputs": {k: v.tolist() for k, v in got.items()},
        }
        GOLDEN.write_text(json.dumps(payload, indent=1) + "\n")
    stored = json.loads(GOLDEN.read_text())
    for name, value in golden_inputs().items():
        np.testing.assert_array_equal(
            np.asarray(stored["inputs"][name], dtype=value.dtype), value, err_msg=f"input {name} drifted"
        )
    with torch.no_grad():
        torch_out = H.CTMWAHead(model)(*(torch.from_numpy(v) for v in golden_inputs().values()))
    for name in H.HEAD_OUTPUTS:
        want = np.asarray(stored["outputs"][name], dtype=np.float32)
        np.testing.assert_allclose(got[name], want, atol=1e-5, err_msg=f"onnx {name}")
        np.testing.assert_allclose(torch_out[name].numpy(), want, atol=1e-5, err_msg=f"torch {name}")


# --------------------------------------------------------------------------------------------------- evidence at large logits


def test_evidence_is_exact_with_logits_in_the_hundreds(tmp_path):
    """Evidence classifiers fitted on separable data reach |logits| in the hundreds, where a float32 softmax
    underflows and runtimes disagree. The graph computes sigmoid(l_c - l_neutral) from the logits: it exports,
    passes validation (whose stress case drives the logits that far), and equals a float64 reference."""
    model = golden_model()
    with torch.no_grad():
        for classifier in (model.txt_e_c, model.img_e_c):
            classifier.weight.mul_(1500.0)  # unit-norm rows now give evidence logits of several hundred
    report = H.export_head_graph(model, tmp_path / "head.onnx", H.HeadExportConfig(extra_batch_sizes=()))
    stress = H.head_inputs(64, H.EVIDENCE_STRESS, text_dim=16, image_dim=16, scale=H.evidence_stress_scale(model))
    stressed = np.abs(stress["image_emb"].astype(np.float64) @ model.img_e_c.weight.detach().double().numpy().T).max(1)
    assert np.median(stressed) >= 0.99 * H.EVIDENCE_STRESS_LOGIT  # the validation itself drove the logits that far
    rng = np.random.default_rng(11)
    n = 400
    feeds = {
        "text_emb": unit_rows(rng, n, 16),
        "image_emb": unit_rows(rng, n, 16),
        "has_text": np.ones(n, bool),
        "has_image": np.ones(n, bool),
    }
    got = run_head(report.path, feeds)
    predicted = got["logits"].argmax(1)
    for side, classifier in (("text", model.txt_e_c), ("image", model.img_e_c)):
        emb = feeds[f"{side}_emb"]
        logits = emb.astype(np.float64) @ classifier.weight.double().detach().numpy().T
        assert (np.abs(logits).max(1) >= 300).sum() >= n // 4, "the test must reach logits of 300"
        want = evidence_float64(classifier.weight.detach(), classifier.bias.detach(), emb, predicted, neutral=1)
        bound = float32_evidence_bound(classifier.weight.detach(), classifier.bias.detach(), emb, predicted, neutral=1)
        diff = np.abs(got[f"{side}_evidence"].astype(np.float64) - want)
        # Within 1e-5 wherever float32 logits can hold it (the saturated far range, where the old formula was off by
        # 1.0); near a tie of l_c and l_n, within what float32 logits of this size guarantee on any CPU.
        assert np.all(diff <= np.maximum(bound, 1e-5)), (side, float(diff.max()))
        assert np.all(diff[bound <= 1e-5] <= 1e-5) and (bound <= 1e-5).sum() >= n // 8, side
        assert ((want > 1e-3) & (want < 1 - 1e-3)).any() and (want < 1e-30).any()  # both the middle and the far tail
        assert np.all(got[f"{side}_evidence"][predicted == 1] == 0.5)  # a neutral prediction carries no sentiment


def test_training_on_separable_images_exports(tmp_path, encoder_bundle):
    """Features whose image side is perfectly separable by its unimodal label: the image evidence classifier's
    weights grow until |logits| reach the hundreds; `ctmwa-export head` validates, and the bundle's head matches
    float64 within 1e-4."""
    from ctmwa_training.cli import main as train_main
    from fixtures.features import SyntheticSpec, write_synthetic_features

    features = write_synthetic_features(
        tmp_path / "f.parquet", n=600, num_classes=3, dim=16, seed=1, spec=SyntheticSpec(cue_snr=60.0)
    )
    out = tmp_path / "ck"
    config = '{"model": {"embed_dim": 8, "weight_net_hidden": 16}, "training": {"lr": 0.05, "batch_size": 64}}'
    assert (
        train_main(["--features", str(features), "--out", str(out), "--epochs", "2", "--seed", "0", "--config", config])
        == 0
    )
    model, _, _ = load_checkpoint(out)
    bundle = tmp_path / "bundle"
    assert export_main(["head", "--checkpoint", str(out), "--encoders", str(encoder_bundle), "--out", str(bundle)]) == 0
    rng = np.random.default_rng(2)
    n = 300
    # Embeddings scaled so the image evidence logits reach 140 (the CLIP-like unit rows of separable data come close).
    scale = 140.0 / np.median(np.abs(unit_rows(rng, 64, 16) @ model.img_e_c.weight.detach().numpy().T).max(1))
    feeds = {
        "text_emb": unit_rows(rng, n, 16) * np.float32(scale),
        "image_emb": unit_rows(rng, n, 16) * np.float32(scale),
        "has_text": np.ones(n, bool),
        "has_image": np.ones(n, bool),
    }
    got = run_head(bundle / HEAD, feeds)
    predicted = got["logits"].argmax(1)
    for side, classifier in (("text", model.txt_e_c), ("image", model.img_e_c)):
        emb = feeds[f"{side}_emb"]
        want = evidence_float64(classifier.weight.detach(), classifier.bias.detach(), emb, predicted, neutral=1)
        bound = float32_evidence_bound(classifier.weight.detach(), classifier.bias.detach(), emb, predicted, neutral=1)
        diff = np.abs(got[f"{side}_evidence"].astype(np.float64) - want)
        assert np.all(diff <= np.maximum(bound, 1e-4)), (
            side,
            float(diff.max()),
        )  # 1e-4, or float32's guarantee near a tie
    image_logits = np.abs(feeds["image_emb"].astype(np.float64) @ model.img_e_c.weight.detach().double().numpy().T).max(
        1
    )
    assert np.median(image_logits) >= 100  # the far range, where the float32 softmax used to underflow


# --------------------------------------------------------------------------------------------------- CLI and errors


def test_cli_refuses_an_existing_bundle_and_a_dim_mismatch(
    tiny_checkpoint, encoder_bundle, full_bundle, tmp_path, capsys
):
    args = ["head", "--checkpoint", str(tiny_checkpoint), "--encoders", str(encoder_bundle)]
    assert export_main([*args, "--out", str(full_bundle)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    narrow = CTMWAConfig(text_dim=8, image_dim=8, embed_dim=4)
    save_checkpoint(CTMWA(narrow), narrow, tmp_path / "narrow", {"labels": ["positive", "neutral", "negative"]})
    with pytest.raises(BundleError, match="text_emb of width 16, the checkpoint's model takes 8"):
        export_head(tmp_path / "narrow", encoder_bundle, tmp_path / "out")
    assert (
        export_main(
            [
                "head",
                "--checkpoint",
                str(tiny_checkpoint),
                "--encoders",
                str(full_bundle),
                "--out",
                str(tmp_path / "o2"),
            ]
        )
        == 2
    )
    assert "already has a head" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o2").exists()


def test_labels_must_match_the_classes(tiny_checkpoint, encoder_bundle, tmp_path, capsys):
    args = [
        "head",
        "--checkpoint",
        str(tiny_checkpoint),
        "--encoders",
        str(encoder_bundle),
        "--out",
        str(tmp_path / "b"),
    ]
    assert export_main([*args, "--labels", "good,bad"]) == 2
    assert "3 classes" in capsys.readouterr().err
    assert export_main([*args, "--calibrate"]) == 2
    assert "--features" in capsys.readouterr().err


def test_cli_calibrated_fp16_export(tiny_checkpoint, encoder_bundle, tiny_features, tmp_path):
    out = tmp_path / "calibrated"
    args = ["head", "--checkpoint", str(tiny_checkpoint), "--encoders", str(encoder_bundle), "--out", str(out)]
    assert export_main([*args, "--calibrate", "--features", str(tiny_features), "--fp16"]) == 0
    bundle = load_bundle(out)
    calibration = bundle.manifest["calibration"]
    assert calibration["method"] == "temperature" and calibration["split"] == "valid" and calibration["rows"] > 0
    assert calibration["temperature"] > 0 and calibration["temperature"] != 1.0
    for key in ("ece_before", "ece_after", "nll_before", "nll_after"):
        assert 0 <= calibration[key] < 10
    assert calibration["nll_after"] <= calibration["nll_before"] + 1e-9
    assert bundle.manifest["head"]["precision"] == "fp16"
    inputs = H.head_inputs(50, "mixed", text_dim=16, image_dim=16, seed=3)
    got = run_head(bundle.path(HEAD), inputs)
    scaled = torch.softmax(torch.from_numpy(got["logits"]) / calibration["temperature"], 1).numpy()
    np.testing.assert_allclose(got["probs"], scaled, atol=1e-3)  # fp16 inside: probs use the graph's own logits
    shutil.rmtree(out)
