"""Precision variants of the CLIP encoders: int8 for CPU workers, fp16 for GPU workers, each validated against fp32.

The fp32 graphs are exported from PyTorch (ctmwa_export.encoders); the variants are derived from them:

    int8  onnxruntime.quantization.quantize_dynamic of the weight MatMuls, int8 weights (QInt8), activations
          quantized at run time, one scale per batch: a post's int8 embedding moves slightly (~1e-3) with what shares
          its batch; on CPUs with AVX-512 VNNI / AMX these MatMuls run as int8
    fp16  onnxruntime.transformers.float16.convert_float_to_float16 with keep_io_types: pixels stay uint8, tokens
          int64, embeddings float32; the arithmetic is float16 (for GPUs; a CPU runs it slowly or not at all)

Each variant is checked by the same engine as the fp32 graphs (ctmwa_export.spec.validate_onnx) against the PyTorch fp32
encoder, at batch sizes 1, 3 and 7, with its own tolerance (`VariantTolerance`): smallest row-wise cosine of the
embeddings, largest element difference, and, once a head joins the encoders (`ctmwa-export head`), argmax agreement
of that head on the variant's embeddings against the fp32 embeddings. A variant that fails writes no bundle.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctmwa_batch.errors import ExportValidationError
from ctmwa_batch.model.bundle import FP16, FP32, INT8, PRECISIONS, Bundle, encoder_files
from ctmwa_batch.model.runtime import RuntimeConfig, create_session
from ctmwa_export.spec import ExportSpec, ValidationReport, validate_onnx

logger = logging.getLogger(__name__)

# What `ctmwa-export encoders` writes unless told otherwise: fp32 (what trains the head and what other runtimes read)
# and int8 (the CPU worker's ~3x); fp16 is opt-in (--precision fp16) since only a GPU gains from it and this
# project has measured no GPU yet.
DEFAULT_PRECISIONS = (FP32, INT8)
# Rows of the head-agreement check besides the validation batch sizes 1, 3, 7: enough that one flip is 2%, not 9%.
AGREEMENT_EXTRA_BATCH = 32


@dataclass(frozen=True)
class VariantTolerance:
    """How far one precision variant may stray from the PyTorch fp32 encoder."""

    min_cosine: float  # smallest cosine between a row's variant embedding and its fp32 embedding
    atol: float  # largest |variant - fp32| on any embedding element (embeddings are unit-norm)
    min_agreement: float  # smallest share of rows where the head's argmax on the variant's embeddings is fp32's


# Measured margins (tiny CLIP and random full-size ViT-B/32, README "Precision"): fp16 min cosine > 0.9999,
# int8 > 0.995 on full-size, lower on the tiny 16-d CLIP whose few weights quantize coarsely.
TOLERANCES: Mapping[str, VariantTolerance] = {
    FP32: VariantTolerance(min_cosine=0.99999, atol=1e-4, min_agreement=1.0),
    FP16: VariantTolerance(min_cosine=0.9999, atol=5e-3, min_agreement=0.95),
    INT8: VariantTolerance(min_cosine=0.995, atol=0.1, min_agreement=0.9),
}


def check_precisions(precisions: tuple[str, ...]) -> tuple[str, ...]:
    """Validated, ordered, without repeats; fp32 is always part of it (the head trains on fp32 features)."""
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise ValueError(f"precision(s) {unknown} unknown; use --precision with {list(PRECISIONS)}")
    if FP32 not in precisions:
        raise ValueError(
            f"precisions {list(precisions)} lack fp32: the head trains on fp32 features and other variants derive from it; add --precision fp32"
        )
    return tuple(p for p in PRECISIONS if p in precisions)


# --------------------------------------------------------------------------------------------------- conversion


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of an fp32 graph: the MatMuls with constant weights (QInt8 weights, activations
    quantized at run time). Attention's activation x activation MatMuls and the patch convolution stay fp32: the
    quantized convolution (ConvInteger) ran the ViT-B/32 tower at a third of the speed (one image per run), and
    quantizing both sides of a MatMul only loses precision."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"],
        extra_options={"MatMulConstBOnly": True},
    )


def convert_fp16(src: Path, dst: Path) -> None:
    """float16 weights and arithmetic, float32 / integer inputs and outputs kept (keep_io_types)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


CONVERTERS: Mapping[str, Callable[[Path, Path], None]] = {INT8: quantize_int8, FP16: convert_fp16}


def variant_spec(
    spec: ExportSpec, precision: str, tolerance: VariantTolerance | None = None, **changes: Any
) -> ExportSpec:
    """The fp32 graph's spec with a variant's tolerances (same names, shapes and batch sizes)."""
    tol = tolerance or TOLERANCES[precision]
    return dataclasses.replace(
        spec, name=f"{spec.name} ({precision})", atol=tol.atol, min_cosine=tol.min_cosine, **changes
    )


def figures(report: ValidationReport, spec: ExportSpec) -> dict[str, Any]:
    """A validation report as the manifest's variant figures."""
    out: dict[str, Any] = {
        "batch_sizes": list(report.batch_sizes),
        "rows": report.rows,
        "max_abs_diff": max(report.max_abs_diff.values(), default=0.0),
        "atol": spec.atol,
    }
    if report.min_cosine:
        out["min_cosine"] = min(report.min_cosine.values())
        out["tolerance_min_cosine"] = spec.min_cosine
    if report.agreement is not None:
        out["argmax_agreement"] = report.agreement
        out["tolerance_min_agreement"] = spec.min_agreement
    return out


def write_variants(
    precisions: tuple[str, ...],
    specs: Mapping[str, ExportSpec],
    references: Mapping[str, torch.nn.Module],
    folder: Path,
    fp32_reports: Mapping[str, ValidationReport],
) -> dict[str, dict[str, Any]]:
    """Derive each non-fp32 variant of every graph from its fp32 file in `folder`, validate it against the PyTorch
    reference, and return the manifest's variant entries (validation figures; file hashes are added by the bundle).

    `specs` / `references` / `fp32_reports` are keyed by graph name ("image_encoder", "text_encoder")."""
    entries: dict[str, dict[str, Any]] = {
        FP32: {"validation": {g: figures(r, specs[g]) for g, r in fp32_reports.items()}}
    }
    for precision in precisions:
        if precision == FP32:
            continue
        validation = {}
        for graph, name in encoder_files(precision).items():
            src, dst = folder / encoder_files(FP32)[graph], folder / name
            try:
                CONVERTERS[precision](src, dst)
            except Exception as e:
                raise ExportValidationError(
                    f"{graph} ({precision})", [f"conversion failed: {type(e).__name__}: {e}"]
                ) from e
            spec = variant_spec(specs[graph], precision)
            try:
                report = validate_onnx(spec, dst, references[graph])
            except ExportValidationError:
                dst.unlink(missing_ok=True)
                raise
            validation[graph] = figures(report, spec)
        entries[precision] = {"validation": validation}
        logger.info(
            "%s encoders: %s",
            precision,
            {g: {k: v for k, v in f.items() if k in ("min_cosine", "max_abs_diff")} for g, f in validation.items()},
        )
    return entries


# --------------------------------------------------------------------------------------------------- with a head


class OnnxReference(torch.nn.Module):
    """An ONNX Runtime session standing in for a PyTorch module as the validation reference (the fp32 encoder graph,
    itself validated against PyTorch to 1e-4, where the PyTorch CLIP is not at hand)."""

    def __init__(self, path: Path, input_names: tuple[str, ...], output_name: str):
        super().__init__()
        self.session = create_session(path, RuntimeConfig(device="cpu"))
        self.input_names = input_names
        self.output_name = output_name

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = {name: t.numpy() for name, t in zip(self.input_names, inputs)}
        return torch.from_numpy(self.session.run(feeds)[self.output_name])


def head_agreement(
    bundle: Bundle,
    specs: Mapping[str, ExportSpec],
    head_logits: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> dict[str, dict[str, Any]]:
    """For every variant of `bundle` but fp32 (the reference): the head's argmax agreement on the variant's embeddings against the fp32
    graphs' (which stand for PyTorch fp32), per graph, with the other modality's embedding from fp32.

    `head_logits(text_emb, image_emb) -> logits` (both modalities present). Raises ExportValidationError when a
    variant agrees less than its tolerance; returns precision -> {graph: figures} to merge into the manifest."""
    fp32_files = encoder_files(FP32)
    refs = {
        graph: OnnxReference(bundle.root / fp32_files[graph], specs[graph].input_names, specs[graph].output_names[0])
        for graph in fp32_files
    }
    partner_cache: dict[tuple[str, int], np.ndarray] = {}

    def partner(graph: str, n: int) -> np.ndarray:
        """fp32 embedding of the other modality for a batch of n (same inputs every time)."""
        other = "text_encoder" if graph == "image_encoder" else "image_encoder"
        if (other, n) not in partner_cache:
            inputs = specs[other].make_inputs(n)
            partner_cache[(other, n)] = refs[other](
                *(torch.from_numpy(inputs[k]) for k in specs[other].input_names)
            ).numpy()
        return partner_cache[(other, n)]

    def agreement_fn(graph: str) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
        output = specs[graph].output_names[0]

        def predict(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
            emb = outputs[output]
            other = partner(graph, len(emb))
            logits = head_logits(emb, other) if graph == "text_encoder" else head_logits(other, emb)
            return np.argmax(logits, axis=1)

        return predict

    result: dict[str, dict[str, Any]] = {}
    for precision in bundle.precisions:
        if precision == FP32:
            continue  # the fp32 graphs are the reference
        per_graph = {}
        for graph, name in encoder_files(precision).items():
            tol = TOLERANCES[precision]
            spec = variant_spec(
                specs[graph],
                precision,
                agreement=agreement_fn(graph),
                min_agreement=tol.min_agreement,
                extra_batch_sizes=(*specs[graph].extra_batch_sizes, AGREEMENT_EXTRA_BATCH),
            )
            report = validate_onnx(spec, bundle.root / name, refs[graph])
            per_graph[graph] = {
                "argmax_agreement": report.agreement,
                "rows": report.rows,
                "tolerance_min_agreement": tol.min_agreement,
            }
        result[precision] = per_graph
        logger.info(
            "head argmax agreement with fp32 embeddings, %s encoders: %s",
            precision,
            {g: f["argmax_agreement"] for g, f in per_graph.items()},
        )
    return result


def agreement_updates(
    bundle: Bundle, model: torch.nn.Module, specs: Mapping[str, ExportSpec]
) -> dict[str, dict[str, Any]]:
    """Head argmax agreement of every variant of an encoders bundle with `model` (a trained CTMWA), as the manifest's
    `encoder_variants` entries with the figures merged in; {} for an old bundle without the list (fp32 only).

    `specs`: the bundle's encoder specs by graph name (ctmwa_export.encoders.specs_for_bundle)."""
    from ctmwa_batch.model.bundle import VARIANTS

    if not bundle.manifest.get(VARIANTS):
        return {}
    model = model.eval()

    def head_logits(text_emb: np.ndarray, image_emb: np.ndarray) -> np.ndarray:
        n = len(text_emb)
        with torch.no_grad():
            present = torch.ones(n, dtype=torch.bool)
            return model(torch.from_numpy(text_emb), torch.from_numpy(image_emb), present, present).logits.numpy()

    measured = head_agreement(bundle, specs, head_logits)
    entries = {}
    for precision, per_graph in measured.items():
        entry = bundle.variant(precision)
        validation = dict(entry.get("validation") or {})
        validation["head"] = {
            "argmax_agreement": min(f["argmax_agreement"] for f in per_graph.values()),
            "rows": min(f["rows"] for f in per_graph.values()),
            "by_graph": {g: f["argmax_agreement"] for g, f in per_graph.items()},
            "tolerance_min_agreement": TOLERANCES[precision].min_agreement,
            "against": "the head on the fp32 graphs' embeddings (validated against PyTorch to 1e-4); the other modality fp32",
        }
        entries[precision] = {**entry, "validation": validation}
    return entries
