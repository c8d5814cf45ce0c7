"""The generic export-and-validate engine, on small modules (a head-shaped one among them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctmwa_batch.errors import ExportValidationError
from export.spec import ExportSpec, export_and_validate

D, C = 8, 3


class HeadLike(torch.nn.Module):
    """Same signature as the CTMWA head: two embeddings and two bool masks in, several outputs out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.t2i = torch.nn.Linear(D, D)
        self.cls = torch.nn.Linear(2 * D, C)

    def forward(self, text_emb, image_emb, has_text, has_image):
        image = torch.where(has_image[:, None], image_emb, self.t2i(text_emb))  # (N, D)
        text = torch.where(has_text[:, None], text_emb, image_emb)  # (N, D)
        logits = self.cls(torch.cat([text, image], dim=-1))  # (N, C)
        return {"logits": logits, "probs": logits.softmax(-1), "text_weight": torch.sigmoid(logits[:, 0])}


def head_inputs(batch_size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch_size)
    return {
        "text_emb": rng.standard_normal((batch_size, D)).astype(np.float32),
        "image_emb": rng.standard_normal((batch_size, D)).astype(np.float32),
        "has_text": rng.random(batch_size) > 0.3,
        "has_image": rng.random(batch_size) > 0.3,
    }


def head_spec(**overrides) -> ExportSpec:
    names = ("text_emb", "image_emb", "has_text", "has_image")
    outputs = ("logits", "probs", "text_weight")
    fields = dict(
        name="head",
        input_names=names,
        output_names=outputs,
        dynamic_axes={name: {0: "batch"} for name in (*names, *outputs)},
        make_inputs=head_inputs,
        output_shapes={"logits": ("batch", C), "probs": ("batch", C), "text_weight": ("batch",)},
        atol=1e-5,
        extra_batch_sizes=(1000,),
    )
    return ExportSpec(**{**fields, **overrides})


def test_head_shaped_module_exports_and_validates(tmp_path):
    out = tmp_path / "bundle" / "head.onnx"
    report = export_and_validate(head_spec(), HeadLike(), out)
    assert out.is_file()
    assert report.batch_sizes == (1, 3, 7, 1000)
    assert set(report.max_abs_diff) == {"logits", "probs", "text_weight"} and max(report.max_abs_diff.values()) < 1e-5
    assert sorted(p.name for p in out.parent.iterdir()) == ["head.onnx"]  # no staging left behind


def test_torchscript_exporter_also_works(tmp_path):
    report = export_and_validate(head_spec(dynamo=False), HeadLike(), tmp_path / "head.onnx")
    assert report.path.is_file()


class LiesWhenExported(HeadLike):
    """PyTorch and the exported graph disagree: the graph doubles the logits."""

    def forward(self, text_emb, image_emb, has_text, has_image):
        out = super().forward(text_emb, image_emb, has_text, has_image)
        if torch.compiler.is_exporting():
            out = {**out, "logits": out["logits"] * 2}
        return out


def test_disagreement_collects_every_failure_and_writes_nothing(tmp_path):
    out = tmp_path / "head.onnx"
    out.write_bytes(b"the previous, good graph")
    with pytest.raises(ExportValidationError) as e:
        export_and_validate(head_spec(), LiesWhenExported(), out)
    err = e.value
    assert err.graph == "head"
    assert len(err.failures) == 4  # batch 1, 3, 7 and 1000, all on "logits"
    assert all("output 'logits' max |onnxruntime - PyTorch|" in f for f in err.failures)
    assert err.max_abs_diff > 1e-3 and "max |diff|" in str(err)
    assert out.read_bytes() == b"the previous, good graph"  # destination untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.onnx"]


def test_batch_axis_baked_in_is_caught_at_every_other_batch_size(tmp_path):
    with pytest.raises(ExportValidationError) as e:
        export_and_validate(head_spec(dynamic_axes={}, extra_batch_sizes=()), HeadLike(), tmp_path / "head.onnx")
    assert [f.split(":")[0] for f in e.value.failures] == ["batch 1", "batch 3", "batch 7"]
    assert all("onnxruntime failed" in f for f in e.value.failures)
    assert not (tmp_path / "head.onnx").exists()


def test_wrong_output_shape_in_spec_is_reported(tmp_path):
    with pytest.raises(ExportValidationError, match=r"output 'probs' has shape \(1, 3\), spec says \(1, 4\)"):
        export_and_validate(head_spec(output_shapes={"probs": ("batch", 4)}, extra_batch_sizes=()), HeadLike(), tmp_path / "h.onnx")


def test_output_names_that_differ_from_the_spec_are_reported(tmp_path):
    with pytest.raises(ExportValidationError, match=r"graph outputs are \['logits', .*spec says \['logits'\]"):
        export_and_validate(head_spec(output_names=("logits",), dynamic_axes={}), HeadLike(), tmp_path / "h.onnx")
    assert list(tmp_path.iterdir()) == []


class Unexportable(HeadLike):
    def forward(self, text_emb, image_emb, has_text, has_image):
        raise RuntimeError("cannot trace me")


def test_export_failure_is_a_validation_error(tmp_path):
    with pytest.raises(ExportValidationError, match="torch.onnx.export failed: RuntimeError: cannot trace me"):
        export_and_validate(head_spec(), Unexportable(), tmp_path / "h.onnx")
    assert list(tmp_path.iterdir()) == []


def test_spec_rejects_unknown_axis_names_and_batch_one():
    with pytest.raises(ValueError, match="neither inputs"):
        head_spec(dynamic_axes={"pixels": {0: "batch"}})
    with pytest.raises(ValueError, match="export_batch_size 1"):
        head_spec(export_batch_size=1)
