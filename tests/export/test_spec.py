"""The generic export-and-validate engine, on small modules (a head-shaped one among them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctmwa_batch.errors import ExportValidationError
from ctmwa_export.spec import ExportSpec, export_and_validate

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
        export_and_validate(
            head_spec(output_shapes={"probs": ("batch", 4)}, extra_batch_sizes=()), HeadLike(), tmp_path / "h.onnx"
        )


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


# --------------------------------------------------------------------------------------------------- reference, cases, tolerances


def test_graph_is_checked_against_the_reference_module(tmp_path):
    import copy

    exported = HeadLike()
    export_and_validate(
        head_spec(extra_batch_sizes=()), exported, tmp_path / "a.onnx", reference=copy.deepcopy(exported)
    )
    other = HeadLike()
    with torch.no_grad():
        other.cls.bias += 0.1
    with pytest.raises(ExportValidationError, match="output 'logits' max"):
        export_and_validate(head_spec(extra_batch_sizes=()), exported, tmp_path / "b.onnx", reference=other)
    assert not (tmp_path / "b.onnx").exists()


def cased_inputs(batch_size: int, case: str) -> dict[str, np.ndarray]:
    inputs = head_inputs(batch_size)
    present = case == "all present"
    return {**inputs, "has_text": np.full(batch_size, present), "has_image": np.full(batch_size, present)}


def test_every_input_case_is_validated_at_every_batch_size_and_named(tmp_path):
    spec = head_spec(
        make_inputs=lambda n, case="all present": cased_inputs(n, case),
        input_cases=("all present", "none present"),
        extra_batch_sizes=(),
    )
    assert spec.cases() == [(n, c) for n in (1, 3, 7) for c in ("all present", "none present")]
    with pytest.raises(ExportValidationError) as e:
        export_and_validate(spec, LiesWhenExported(), tmp_path / "h.onnx")
    assert [f.split(": output")[0] for f in e.value.failures] == [
        f"batch {n}, {c}" for n in (1, 3, 7) for c in ("all present", "none present")
    ]


def test_per_output_tolerance(tmp_path):
    report = export_and_validate(
        head_spec(output_atol={"logits": 1e3}, extra_batch_sizes=()), LiesWhenExported(), tmp_path / "h.onnx"
    )
    assert report.max_abs_diff["logits"] > 1e-3 and report.path.is_file()
    with pytest.raises(ValueError, match="not outputs"):
        head_spec(output_atol={"nope": 1.0})


class ArgmaxBranch(torch.nn.Module):
    """`w` depends on argmax(logits); the exported graph nudges the logits by 1e-3, as lower precision would."""

    def forward(self, x):
        logits = x + (torch.tensor([0.0, 1e-3, 0.0]) if torch.compiler.is_exporting() else 0.0)  # (N, 3)
        return {"logits": logits, "w": (logits.argmax(dim=1) == 1).float()}


def near_ties(batch_size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch_size)
    x = rng.standard_normal((batch_size, 3)).astype(np.float32)
    x[::4, 1] = x[::4, 0] - 5e-4  # every fourth row: class 1 just behind class 0, flipped by the nudge
    x[::4, 2] = x[::4, 0] - 1.0
    return {"x": x}


def argmax_spec(**overrides) -> ExportSpec:
    fields = dict(
        name="argmax",
        input_names=("x",),
        output_names=("logits", "w"),
        make_inputs=near_ties,
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}, "w": {0: "batch"}},
        atol=2e-3,
        extra_batch_sizes=(100,),
        argmax_of="logits",
        argmax_dependent=("w",),
    )
    return ExportSpec(**{**fields, **overrides})


def test_near_ties_flip_dependent_outputs_unless_skipped(tmp_path):
    with pytest.raises(ExportValidationError, match="output 'w' max"):
        export_and_validate(argmax_spec(argmax_dependent=()), ArgmaxBranch(), tmp_path / "a.onnx")
    # The graph's logits are off by 1e-3, so rows with a top-two gap under 2e-3 may flip: their `w` is skipped.
    report = export_and_validate(argmax_spec(max_ambiguous=0.5), ArgmaxBranch(), tmp_path / "b.onnx")
    assert report.rows == 1 + 3 + 7 + 100 and report.ambiguous_rows >= 1 + 1 + 2 + 25
    assert report.max_abs_diff["w"] == 0.0
    with pytest.raises(ExportValidationError, match=r"rows have a near-tie on 'logits' .* more than 5%"):
        export_and_validate(argmax_spec(), ArgmaxBranch(), tmp_path / "c.onnx")
    # A floor on the margin widens the ambiguous set beyond the observed error.
    wide = export_and_validate(argmax_spec(max_ambiguous=1.0, argmax_margin=10.0), ArgmaxBranch(), tmp_path / "d.onnx")
    assert wide.ambiguous_rows == wide.rows


def test_export_is_reproducible_and_carries_no_build_paths(tmp_path):
    # the model version is a hash of the files: the same module exported from any checkout must give the same bytes
    a = tmp_path / "a" / "head.onnx"
    b = tmp_path / "elsewhere" / "b" / "head.onnx"
    export_and_validate(head_spec(extra_batch_sizes=()), HeadLike(), a)
    export_and_validate(head_spec(extra_batch_sizes=()), HeadLike(), b)
    data = a.read_bytes()
    assert data == b.read_bytes()
    assert b"spec.py" not in data and b"test_spec.py" not in data and str(tmp_path).encode() not in data
