"""Encoder precision variants: conversion, validation against PyTorch with each variant's tolerance, manifest figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from ctmwa_batch.errors import ExportValidationError
from ctmwa_batch.model import bundle as B
from ctmwa_batch.model.runtime import RuntimeConfig, create_session
from ctmwa_export import precision as P
from ctmwa_export.encoders import EncoderExportConfig, ImageEncoder, image_encoder_spec, load_clip


def _op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _initializer_types(path: Path) -> set[int]:
    return {t.data_type for t in onnx.load(str(path)).graph.initializer}


def test_every_variant_is_its_own_validated_graph_listed_with_checksums(encoder_bundle):
    bundle = B.load_bundle(encoder_bundle)
    assert bundle.precisions == ("fp32", "fp16", "int8")
    variants = bundle.manifest[B.VARIANTS]
    for precision in bundle.precisions:
        entry = variants[precision]
        for graph, name in B.encoder_files(precision).items():
            assert (encoder_bundle / name).is_file()
            assert entry["files"][graph] == {"file": name, "sha256": bundle.files[name]}
            figures = entry["validation"][graph]
            tol = P.TOLERANCES[precision]
            assert figures["batch_sizes"] == [1, 3, 7] and figures["rows"] == 11
            assert tol.min_cosine <= figures["min_cosine"] <= 1.0 + 1e-9
            assert 0.0 <= figures["max_abs_diff"] <= tol.atol
    # The variants really are other graphs: int8 weights and integer MatMuls; fp16 weights; same signature.
    int8_image = encoder_bundle / B.encoder_files("int8")["image_encoder"]
    assert onnx.TensorProto.INT8 in _initializer_types(int8_image)
    assert _op_types(int8_image) & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}
    assert "ConvInteger" not in _op_types(int8_image)  # the patch convolution stays fp32 (speed)
    fp16_text = encoder_bundle / B.encoder_files("fp16")["text_encoder"]
    assert onnx.TensorProto.FLOAT16 in _initializer_types(fp16_text)
    for precision in ("fp16", "int8"):
        for graph, name in B.encoder_files(precision).items():
            fp32_name = B.encoder_files("fp32")[graph]
            session, fp32 = (create_session(encoder_bundle / n, RuntimeConfig(device="cpu")) for n in (name, fp32_name))
            assert (session.input_names, session.output_names) == (fp32.input_names, fp32.output_names)
            assert [i.type for i in session.session.get_inputs()] == [i.type for i in fp32.session.get_inputs()]
            assert session.session.get_outputs()[0].type == "tensor(float)"


def test_int8_image_embeddings_stay_close_to_fp32(encoder_bundle):
    pixels = np.random.default_rng(5).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    emb = {
        p: create_session(encoder_bundle / B.encoder_files(p)["image_encoder"], RuntimeConfig(device="cpu")).run(
            {"pixels": pixels}
        )["image_emb"]
        for p in ("fp32", "int8", "fp16")
    }
    for p in ("int8", "fp16"):
        cosine = (
            (emb[p] * emb["fp32"]).sum(axis=1) / np.linalg.norm(emb[p], axis=1) / np.linalg.norm(emb["fp32"], axis=1)
        )
        assert cosine.min() >= P.TOLERANCES[p].min_cosine, (p, cosine.min())


def test_a_variant_beyond_its_tolerance_fails_naming_the_figure(encoder_bundle, tiny_clip_dir):
    model, _, processor = load_clip(str(tiny_clip_dir))
    bundle = B.load_bundle(encoder_bundle)
    image = bundle.image_spec
    spec = image_encoder_spec(image, 16)
    strict = P.VariantTolerance(min_cosine=0.999999999, atol=1e-7, min_agreement=1.0)
    with pytest.raises(ExportValidationError) as e:
        P.validate_onnx(
            P.variant_spec(spec, "int8", strict),
            encoder_bundle / "image_encoder.int8.onnx",
            ImageEncoder(model, image.mean, image.std),
        )
    text = str(e.value)
    assert "image_encoder (int8)" in text and "row-wise cosine" in text and "tolerance 1e-07" in text


def test_head_argmax_agreement_is_recorded_per_variant(full_bundle):
    bundle = B.load_bundle(full_bundle)
    for precision in ("fp16", "int8"):
        head = bundle.variant(precision)["validation"]["head"]
        assert head["rows"] == 1 + 3 + 7 + P.AGREEMENT_EXTRA_BATCH
        assert P.TOLERANCES[precision].min_agreement <= head["argmax_agreement"] <= 1.0
        assert set(head["by_graph"]) == {"image_encoder", "text_encoder"}
    assert "head" not in bundle.variant("fp32")["validation"]  # fp32 is what the others are compared with
    # The head joined without losing a variant or its checksums.
    assert bundle.precisions == ("fp32", "fp16", "int8")


def test_precision_choice_of_the_export(tmp_path):
    assert EncoderExportConfig().precisions == ("fp32", "int8")  # the default (README: why)
    assert EncoderExportConfig(precisions=("int8", "fp32", "int8")).precisions == ("fp32", "int8")
    with pytest.raises(ValueError, match="lack fp32"):
        EncoderExportConfig(precisions=("int8",))
    with pytest.raises(ValueError, match="bf16"):
        EncoderExportConfig(precisions=("fp32", "bf16"))


def test_cli_precision_flags(tiny_clip_dir, tmp_path, capsys):
    from ctmwa_export.cli import main as export_main

    out = tmp_path / "enc"
    assert export_main(["encoders", "--from", str(tiny_clip_dir), "--out", str(out), "--precision", "fp16"]) == 0
    bundle = B.load_bundle(out)
    assert bundle.precisions == ("fp32", "fp16")  # fp32 always, int8 only when asked for alongside
    assert json.loads((out / B.MANIFEST).read_text())[B.VARIANTS]["fp16"]["validation"]["image_encoder"]["rows"] == 11
