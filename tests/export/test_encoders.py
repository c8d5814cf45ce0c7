"""CLIP encoder export: graph contracts, padding, the legacy (argmax) pooling, parity checks, the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from ctmwa_batch.errors import ExportValidationError
from ctmwa_batch.model.bundle import IMAGE_ENCODER, TEXT_ENCODER, TOKENIZER, Bundle, load_bundle
from ctmwa_batch.model.preprocess import TextTokenizer
from ctmwa_batch.model.runtime import RuntimeConfig, create_session
from ctmwa_export.cli import main as export_main
from ctmwa_export.encoders import ModelSourceError, check_preprocessing_parity, image_spec_from_processor, load_clip


def _io(path: Path) -> tuple[dict, dict]:
    graph = onnx.load(str(path)).graph

    def sig(values):
        return {
            v.name: (v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in values
        }

    return sig(graph.input), sig(graph.output)


def test_graph_contracts(encoder_bundle):
    inputs, outputs = _io(encoder_bundle / IMAGE_ENCODER)
    assert inputs == {"pixels": (onnx.TensorProto.UINT8, ["batch", 32, 32, 3])}
    assert outputs == {"image_emb": (onnx.TensorProto.FLOAT, ["batch", 16])}
    inputs, outputs = _io(encoder_bundle / TEXT_ENCODER)
    assert inputs == {
        "input_ids": (onnx.TensorProto.INT64, ["batch", "sequence"]),
        "attention_mask": (onnx.TensorProto.INT64, ["batch", "sequence"]),
    }
    assert outputs == {"text_emb": (onnx.TensorProto.FLOAT, ["batch", 16])}
    assert not list(encoder_bundle.glob("*.data"))  # self-contained graphs, no external data


def test_tokenizer_json_works_with_tokenizers_alone(encoder_bundle):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(encoder_bundle / TOKENIZER))
    assert tok.padding is None and tok.truncation is None
    assert tok.encode("good day").ids[0] == load_bundle(encoder_bundle).text_spec.bos_id


def test_text_embedding_ignores_padding_and_batch(encoder_bundle):
    bundle = load_bundle(encoder_bundle)
    session = create_session(bundle.path(TEXT_ENCODER), RuntimeConfig(device="cpu"))
    tok = TextTokenizer(bundle.path(TOKENIZER), bundle.text_spec).encode(
        ["good", "a very long text about a happy dog at the beach"]
    )
    together = session.run({"input_ids": tok.input_ids, "attention_mask": tok.attention_mask})["text_emb"]
    alone_ids = tok.input_ids[:1, : tok.attention_mask[0].sum()]
    alone = session.run({"input_ids": alone_ids, "attention_mask": np.ones_like(alone_ids)})["text_emb"]
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_image_batch_of_one_and_many_agree(encoder_bundle):
    session = create_session(encoder_bundle / IMAGE_ENCODER, RuntimeConfig(device="cpu"))
    pixels = np.random.default_rng(1).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    many = session.run({"pixels": pixels})["image_emb"]
    one = session.run({"pixels": pixels[4:5]})["image_emb"]
    np.testing.assert_allclose(many[4], one[0], atol=1e-5)


def test_parity_check_catches_preprocessing_skew(encoder_bundle, tiny_clip_dir):
    model, tokenizer, processor = load_clip(str(tiny_clip_dir))
    bundle = load_bundle(encoder_bundle)
    assert check_preprocessing_parity(bundle, model, tokenizer, processor, atol=1e-4)["image_emb"] < 1e-4
    skewed = json.loads(json.dumps(bundle.manifest))
    skewed["preprocessing"]["image"]["interpolation"] = "nearest"
    skewed["preprocessing"]["text"]["pad_id"] = 1  # UNK instead of PAD
    with pytest.raises(ExportValidationError) as e:
        check_preprocessing_parity(Bundle(bundle.root, skewed), model, tokenizer, processor, atol=1e-4)
    text = str(e.value)
    assert "decoded pixels differ" in text and "input_ids" in text and "image_emb" in text


def test_unsupported_image_processor_is_refused(tiny_clip_dir):
    _, _, processor = load_clip(str(tiny_clip_dir))
    processor.do_center_crop = False
    with pytest.raises(ModelSourceError, match="shortest-edge resize"):
        image_spec_from_processor(processor)


def test_missing_source_folder(tmp_path):
    with pytest.raises(ModelSourceError, match="is not a folder"):
        load_clip(str(tmp_path / "nope"))


def test_cli_refuses_a_non_empty_destination(tiny_clip_dir, tmp_path, capsys):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert export_main(["encoders", "--from", str(tiny_clip_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_legacy_argmax_pooling_with_pad_equal_to_eos(tmp_path):
    """openai/clip-vit-base-patch32's layout: eos_token_id 2 in the config (argmax pooling), EOS = largest id = pad."""
    from fixtures.clip import build_tiny_clip

    source = build_tiny_clip(tmp_path / "legacy_clip", seed=1, legacy_eos=True)
    out = tmp_path / "bundle"
    # fp32 only: the pooling and --overwrite are what this test is about (the int8 and fp16 variants of the same
    # export path are built and checked for the session's encoder_bundle)
    fp32 = ["--precision", "fp32"]
    assert export_main(["encoders", "--from", str(source), "--out", str(out), "--extra-batch-sizes", "64", *fp32]) == 0
    bundle = load_bundle(out)
    assert bundle.manifest["encoder"]["text_pooling"] == "argmax(input_ids)"
    assert bundle.text_spec.pad_id == bundle.text_spec.eos_id
    assert bundle.manifest["graphs"][TEXT_ENCODER]["max_abs_diff"]["text_emb"] < 1e-4
    # --overwrite replaces it in place (new files, same layout)
    assert (
        export_main(
            ["encoders", "--from", str(source), "--out", str(out), "--overwrite", "--max-text-length", "8", *fp32]
        )
        == 0
    )
    assert load_bundle(out).text_spec.max_length == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "legacy_clip"]


def test_export_config_is_frozen():
    from ctmwa_export.encoders import EncoderExportConfig

    with pytest.raises(dataclasses.FrozenInstanceError):
        EncoderExportConfig().opset = 12  # type: ignore[misc]
