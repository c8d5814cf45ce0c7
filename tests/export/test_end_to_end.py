"""end_to_end.onnx: the three bundle graphs composed into one, validated against running them in sequence."""

from __future__ import annotations

import numpy as np
import pytest

from ctmwa_batch.errors import ExportValidationError
from ctmwa_batch.model.bundle import END_TO_END, HEAD, IMAGE_ENCODER, TEXT_ENCODER, TOKENIZER, load_bundle
from ctmwa_batch.model.preprocess import TextTokenizer
from ctmwa_batch.model.runtime import RuntimeConfig, create_session
from ctmwa_export import end_to_end as E
from ctmwa_export.assemble import export_head
from ctmwa_export.head import HeadExportConfig


@pytest.fixture(scope="module")
def e2e_bundle(tiny_checkpoint, encoder_bundle, tmp_path_factory):
    return export_head(
        tiny_checkpoint,
        encoder_bundle,
        tmp_path_factory.mktemp("e2e") / "bundle",
        HeadExportConfig(end_to_end=True, extra_batch_sizes=()),
    )


def test_end_to_end_graph_is_in_the_bundle_and_matches_the_three_graphs(e2e_bundle):
    bundle = load_bundle(e2e_bundle)
    assert END_TO_END in bundle.files and bundle.has_head
    signature = bundle.manifest["graphs"][END_TO_END]
    assert list(signature["inputs"]) == list(E.END_TO_END_INPUTS) and list(signature["outputs"]) == list(
        E.END_TO_END_OUTPUTS
    )
    assert max(signature["max_abs_diff"].values()) <= 1e-5

    cpu = RuntimeConfig(device="cpu")
    tokens = TextTokenizer(bundle.path(TOKENIZER), bundle.text_spec).encode(
        ["a photo of a cat", "terrible", "", "best day ever"]
    )
    rng = np.random.default_rng(0)
    size = bundle.image_spec.size
    pixels = rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    has_text, has_image = np.array([True, True, False, True]), np.array([True, False, True, False])
    pixels[~has_image] = 0  # what a runtime without an image would feed
    got = create_session(bundle.path(END_TO_END), cpu).run(
        {
            "pixels": pixels,
            "input_ids": tokens.input_ids,
            "attention_mask": tokens.attention_mask,
            "has_text": has_text,
            "has_image": has_image,
        }
    )
    image_emb = create_session(bundle.path(IMAGE_ENCODER), cpu).run({"pixels": pixels})["image_emb"]
    text_emb = create_session(bundle.path(TEXT_ENCODER), cpu).run(
        {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask}
    )["text_emb"]
    want = create_session(bundle.path(HEAD), cpu).run(
        {"text_emb": text_emb, "image_emb": image_emb, "has_text": has_text, "has_image": has_image}
    )
    for name, value in {**want, "text_emb": text_emb, "image_emb": image_emb}.items():
        np.testing.assert_allclose(got[name], value, atol=1e-5, err_msg=name)


def test_a_composed_graph_that_disagrees_is_rejected(e2e_bundle, tmp_path, monkeypatch):
    bundle = load_bundle(e2e_bundle)
    # Compose with the image encoder standing in for... itself but the head swapped for a different one: the
    # reference runs the real head, so every case must fail.
    other_head = tmp_path / "other_head.onnx"
    import onnx

    model = onnx.load(str(bundle.path(HEAD)))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 1 and init.dims[0] == 3:
            arr = onnx.numpy_helper.to_array(init) + 1.0  # shift a bias of the classifier
            init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
    onnx.save(model, str(other_head))
    real = E.compose
    monkeypatch.setattr(E, "compose", lambda image, text, head: real(image, text, other_head))
    out = tmp_path / "e2e.onnx"
    with pytest.raises(ExportValidationError, match="end_to_end"):
        E.write_end_to_end(bundle, bundle.path(HEAD), out, num_classes=3)
    assert not out.exists()
