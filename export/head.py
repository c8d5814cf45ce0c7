"""The CTMWA head graph and its export spec: translators folded, missing modalities as in training.

    head.onnx   text_emb float32 (N, Dt), image_emb float32 (N, Dv), has_text bool (N), has_image bool (N)
                -> logits, probs, text_probs, image_probs float32 (N, C), text_weight, image_weight,
                   text_evidence, image_evidence float32 (N)

`logits` carry the checkpoint's class bias (ctmwa_training.class_bias), so argmax(logits) = argmax(probs) is the
prediction the weight nets and the evidence see; probs = softmax(logits / T) with the calibration's T. The
evidence of a missing modality is 0 (the scorer writes null there).

with the missing-modality semantics of `ctmwa_training.model.CTMWA.forward` (DESIGN.md section 4), validated against the
PyTorch model at batch sizes 1, 3, 7 and 1000 under every mask combination. ctmwa_export.assemble joins it to the encoders
as a full bundle (`ctmwa-export head`).

In eval mode each translator is o(v(relu(W_c x + b))) (softmax over one key is 1, no dropout); the graph holds
that folded form, with o∘v merged into one affine map, so no attention is computed at scoring time.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctmwa_batch.errors import CtmwaError
from ctmwa_batch.model.bundle import (  # the head graph's signature lives with the bundle layout
    HEAD_INPUTS,
    HEAD_OUTPUTS,
    IMAGE_EVIDENCE,
    IMAGE_PROBS,
    IMAGE_WEIGHT,
    LOGITS,
    PROBS,
    TEXT_EVIDENCE,
    TEXT_PROBS,
    TEXT_WEIGHT,
)
from ctmwa_batch.schema import HAS_IMAGE, HAS_TEXT, IMAGE_EMB, TEXT_EMB
from ctmwa_export.spec import DEFAULT_OPSET, ExportSpec, ValidationReport, export_and_validate
from ctmwa_training.model import CTMWA, Translator, TranslatorEvalPieces

logger = logging.getLogger(__name__)

# Validation cases: (has_text, has_image) for every row, or a random mix per row.
MASK_CASES = {
    "text+image": (True, True),
    "text only": (True, False),
    "image only": (False, True),
    "neither": (False, False),
    "mixed": None,
}
# A stress case beyond the mask cases: mixed masks, embeddings scaled so that the evidence classifiers' logits reach
# EVIDENCE_STRESS_LOGIT (a classifier fitted on separable data has |logits| in the hundreds on real inputs, where a
# float32 softmax underflows). Only the bounded evidence outputs are compared there; the unbounded logits scale with the
# inputs and are covered by the unit-norm cases.
EVIDENCE_STRESS = "evidence logits in the hundreds"
EVIDENCE_STRESS_LOGIT = 300.0
VALIDATION_BATCH_SIZES = (1, 3, 7)
EXTRA_BATCH_SIZES = (1000,)


@dataclass(frozen=True)
class HeadExportConfig:
    """What `ctmwa-export head` does besides where it reads and writes."""

    fp16: bool = False  # compute in float16 inside the graph (inputs and outputs stay float32)
    calibrate: bool = False  # fit a temperature on the valid split of `features`; probs = softmax(logits / T)
    features: Path | None = None  # features Parquet for --calibrate (its `valid` split is used)
    labels: tuple[str, ...] | None = None  # class names; None = the checkpoint's `labels`
    fold_translators: bool = (
        True  # export o(v(relu(W_c x + b))) with o∘v merged; False keeps the attention (benchmarks)
    )
    opset: int = DEFAULT_OPSET  # ONNX opset of head.onnx
    atol: float = 1e-4  # fp32: largest |onnxruntime - PyTorch| on any output
    fp16_atol: float = 1e-2  # fp16: largest |diff| on probabilities and weights (values in [0, 1])
    fp16_logits_atol: float = 2e-2  # fp16: largest |diff| on logits (unbounded, so looser)
    extra_batch_sizes: tuple[int, ...] = EXTRA_BATCH_SIZES  # validated besides 1, 3 and 7
    dynamo: bool = True  # torch.onnx's dynamo exporter; False = the TorchScript exporter
    end_to_end: bool = False  # also write end_to_end.onnx (encoders + head in one graph; repeats the encoders' weights)
    overwrite: bool = False  # replace an existing bundle folder at out_dir

    def __post_init__(self) -> None:
        if self.calibrate and self.features is None:
            raise CtmwaError(
                "--calibrate needs --features F: the features Parquet whose 'valid' split fits the temperature"
            )


# --------------------------------------------------------------------------------------------------- graph


class FoldedTranslator(nn.Module):
    """A translator in eval mode, `out(relu(conv(x)))` with out = o∘v: the same function as `Translator.eval()`."""

    def __init__(self, pieces: TranslatorEvalPieces):
        super().__init__()
        d_out, d_in = pieces.conv_weight.shape
        self.conv = nn.Linear(d_in, d_out)
        self.out = nn.Linear(d_out, d_out)
        weight, bias = pieces.merged_output()  # (D_out, D_out), (D_out,)
        with torch.no_grad():
            self.conv.weight.copy_(pieces.conv_weight)
            self.conv.bias.copy_(pieces.conv_bias)
            self.out.weight.copy_(weight)
            self.out.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D_in) -> (N, D_out)."""
        return self.out(F.relu(self.conv(x)))


def fold_translators(model: CTMWA) -> CTMWA:
    """A copy of `model` whose translators are `FoldedTranslator`s (no attention); the original is untouched."""
    folded = copy.deepcopy(model).eval()
    for name in ("txt2img", "img2txt"):
        translator = getattr(folded, name)
        assert isinstance(translator, Translator), f"{name} is already folded"
        with torch.no_grad():
            setattr(folded, name, FoldedTranslator(translator.eval_pieces()))
    return folded


class CTMWAHead(nn.Module):
    """The inference graph: `CTMWA.forward` with masks, named outputs, optional class bias, temperature and dtype.

    It calls the model's own forward, so the missing-modality semantics are the training code's by construction.
    Embeddings of absent modalities are zeroed first: the forward never reads them (the translated stand-in
    replaces them), and a NaN placeholder there must not reach a row with neither modality.
    """

    def __init__(
        self,
        model: CTMWA,
        temperature: float = 1.0,
        dtype: torch.dtype = torch.float32,
        class_bias: list[float] | torch.Tensor | None = None,
    ):
        super().__init__()
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature {temperature} must be positive and finite")
        self.model = model.eval().to(dtype)
        self.temperature = float(temperature)
        self.dtype = dtype
        c = model.config.num_classes
        bias = torch.zeros(c) if class_bias is None else torch.as_tensor(class_bias, dtype=torch.float32).reshape(-1)
        if bias.shape != (c,) or not torch.isfinite(bias).all():
            raise ValueError(f"class bias {bias.tolist()} must be {c} finite numbers, one per class")
        self.register_buffer("class_bias", bias.to(dtype))  # (C,)

    def forward(
        self, text_emb: torch.Tensor, image_emb: torch.Tensor, has_text: torch.Tensor, has_image: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """(N, Dt), (N, Dv) float32, (N,), (N,) bool -> the eight named outputs, float32."""
        text = torch.where(has_text[:, None], text_emb, torch.zeros_like(text_emb)).to(self.dtype)  # (N, Dt)
        image = torch.where(has_image[:, None], image_emb, torch.zeros_like(image_emb)).to(self.dtype)  # (N, Dv)
        out = self.model(text, image, has_text, has_image, class_bias=self.class_bias)
        logits = (
            out.logits + self.class_bias
        ).float()  # (N, C) the same sum the forward took its argmax of (probe blend included)
        zero = torch.zeros_like(out.text_evidence)
        return {
            LOGITS: logits,
            PROBS: torch.softmax(logits / self.temperature, dim=-1),  # (N, C) calibrated when T != 1
            TEXT_PROBS: torch.softmax(out.logits_t.float(), dim=-1),  # (N, C)
            IMAGE_PROBS: torch.softmax(out.logits_v.float(), dim=-1),  # (N, C)
            TEXT_WEIGHT: out.text_weight.float(),  # (N,)
            IMAGE_WEIGHT: out.image_weight.float(),  # (N,)
            TEXT_EVIDENCE: torch.where(has_text, out.text_evidence, zero).float(),  # (N,) 0 where the text is missing
            IMAGE_EVIDENCE: torch.where(
                has_image, out.image_evidence, zero
            ).float(),  # (N,) 0 where the image is missing
        }


def head_modules(
    model: CTMWA,
    *,
    fold: bool = True,
    temperature: float = 1.0,
    fp16: bool = False,
    class_bias: list[float] | None = None,
) -> tuple[CTMWAHead, CTMWAHead]:
    """(module to export, fp32 reference with the model's own translators) for a trained model."""
    reference = CTMWAHead(copy.deepcopy(model), temperature, class_bias=class_bias)
    exported = fold_translators(model) if fold else copy.deepcopy(model)
    return CTMWAHead(exported, temperature, torch.float16 if fp16 else torch.float32, class_bias=class_bias), reference


def head_inputs(
    batch_size: int, case: str = "mixed", *, text_dim: int, image_dim: int, seed: int = 0, scale: float = 1.0
) -> dict[str, np.ndarray]:
    """Random embeddings of norm `scale` (unit norm: like CLIP features) and masks of one MASK_CASES case, or of
    EVIDENCE_STRESS (mixed masks)."""
    cases = [*MASK_CASES, EVIDENCE_STRESS]
    if case not in cases:
        raise ValueError(f"mask case {case!r} unknown; use one of {cases}")
    # Fresh draws per (batch size, case): the validation never reuses the export's example.
    rng = np.random.default_rng([seed, batch_size, cases.index(case)])
    text = rng.standard_normal((batch_size, text_dim)).astype(np.float32)
    image = rng.standard_normal((batch_size, image_dim)).astype(np.float32)
    masks = MASK_CASES.get(case)
    if masks is None:
        has_text, has_image = rng.random(batch_size) < 0.7, rng.random(batch_size) < 0.7
    else:
        has_text, has_image = np.full(batch_size, masks[0]), np.full(batch_size, masks[1])
    return {
        TEXT_EMB: (text * np.float32(scale) / np.linalg.norm(text, axis=1, keepdims=True)).astype(np.float32),
        IMAGE_EMB: (image * np.float32(scale) / np.linalg.norm(image, axis=1, keepdims=True)).astype(np.float32),
        HAS_TEXT: has_text,
        HAS_IMAGE: has_image,
    }


def evidence_stress_scale(model: CTMWA) -> float:
    """The embedding norm at which the evidence classifiers' logits reach EVIDENCE_STRESS_LOGIT on random directions
    (at least 1: a model whose logits are already that large at unit norm is stressed by the unit-norm cases too)."""
    rng = np.random.default_rng(0)
    reach = 0.0
    for classifier in (model.txt_e_c, model.img_e_c):
        w = classifier.weight.detach().double().numpy()  # (C, D)
        x = rng.standard_normal((256, w.shape[1]))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        reach = max(reach, float(np.median(np.abs(x @ w.T).max(axis=1))))
    # Unfitted (zero) classifiers cannot be driven: their logits are their biases at any norm.
    return 1.0 if reach == 0.0 else float(np.clip(EVIDENCE_STRESS_LOGIT / reach, 1.0, 1e4))


def head_spec(
    text_dim: int,
    image_dim: int,
    num_classes: int,
    *,
    fp16: bool = False,
    config: HeadExportConfig = HeadExportConfig(),
    stress_scale: float = 1.0,
) -> ExportSpec:
    """ExportSpec of head.onnx: all four mask combinations (and a mix) at batch sizes 1, 3, 7 and 1000, and the
    evidence stress case (embeddings of norm `stress_scale`, see evidence_stress_scale)."""
    batch = {0: "batch"}

    def make_inputs(n: int, case: str = "mixed") -> dict[str, np.ndarray]:
        scale = stress_scale if case == EVIDENCE_STRESS else 1.0
        return head_inputs(n, case, text_dim=text_dim, image_dim=image_dim, scale=scale)

    if fp16:
        atol, output_atol = config.fp16_atol, {LOGITS: config.fp16_logits_atol}
    else:
        atol, output_atol = config.atol, {}
    return ExportSpec(
        name="head_fp16" if fp16 else "head",
        input_names=HEAD_INPUTS,
        output_names=HEAD_OUTPUTS,
        dynamic_axes={name: batch for name in (*HEAD_INPUTS, *HEAD_OUTPUTS)},
        make_inputs=make_inputs,
        output_shapes={
            **{name: ("batch", num_classes) for name in (LOGITS, PROBS, TEXT_PROBS, IMAGE_PROBS)},
            **{name: ("batch",) for name in (TEXT_WEIGHT, IMAGE_WEIGHT, TEXT_EVIDENCE, IMAGE_EVIDENCE)},
        },
        opset=config.opset,
        atol=atol,
        output_atol=output_atol,
        validation_batch_sizes=VALIDATION_BATCH_SIZES,
        extra_batch_sizes=config.extra_batch_sizes,
        # fp16 resolves a logit of 300 to 0.25, so its evidence there is only as good as fp16: the stress case is fp32's.
        input_cases=tuple(MASK_CASES) if fp16 else (*MASK_CASES, EVIDENCE_STRESS),
        case_outputs={} if fp16 else {EVIDENCE_STRESS: (TEXT_EVIDENCE, IMAGE_EVIDENCE)},
        dynamo=config.dynamo,
        # The weight nets and the evidence take argmax logits: where two logits are closer than the graph's error
        # (fp16), the class, and so they, may flip; those rows are not compared there (the engine counts them).
        argmax_of=LOGITS,
        argmax_dependent=(TEXT_WEIGHT, IMAGE_WEIGHT, TEXT_EVIDENCE, IMAGE_EVIDENCE),
    )


def tolerances(model: CTMWA, config: HeadExportConfig) -> dict[str, float]:
    """Per-output tolerance the head graph of `model` is validated with (recorded in the manifest)."""
    c = model.config
    spec = head_spec(c.text_dim, c.image_dim, c.num_classes, fp16=config.fp16, config=config)
    return {name: spec.tolerance(name) for name in spec.output_names}


def export_head_graph(
    model: CTMWA,
    out_path: str | Path,
    config: HeadExportConfig = HeadExportConfig(),
    temperature: float = 1.0,
    class_bias: list[float] | None = None,
) -> ValidationReport:
    """Export and validate head.onnx alone (no bundle) against the fp32 PyTorch model; nothing written on failure."""
    exported, reference = head_modules(
        model, fold=config.fold_translators, temperature=temperature, fp16=config.fp16, class_bias=class_bias
    )
    c = model.config
    spec = head_spec(
        c.text_dim,
        c.image_dim,
        c.num_classes,
        fp16=config.fp16,
        config=config,
        stress_scale=evidence_stress_scale(model),
    )
    return export_and_validate(spec, exported, out_path, reference=reference)
