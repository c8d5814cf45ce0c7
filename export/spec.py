"""Declarative export specs and the one engine that exports a PyTorch module to ONNX and validates it.

An `ExportSpec` says what a graph looks like (names, dynamic axes, opset), how close it must stay to PyTorch
(tolerance) and how to make inputs for any batch size. `export_and_validate(spec, module, out_path)` exports into
a temporary folder, checks the graph with onnx, runs onnxruntime against PyTorch at batch sizes other than the
export's (and, where the spec names input cases such as mask combinations, under each case), collects every
failure and raises one ExportValidationError; only a graph that passes is moved to `out_path`. The PyTorch side
may be another module than the exported one (`reference=`): a folded or fp16 graph is then checked against the
model it stands for, not against itself.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from ctmwa_batch.errors import ExportValidationError
from ctmwa_batch.model.runtime import RuntimeConfig, create_session

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18

# batch size -> inputs; with ExportSpec.input_cases: (batch size, case name) -> inputs
InputMaker = Callable[..., dict[str, np.ndarray]]


@dataclass(frozen=True)
class ExportSpec:
    """What one exported graph must look like and how to check it against PyTorch."""

    name: str  # graph name, used in logs and errors (e.g. "image_encoder", "head")
    input_names: tuple[str, ...]  # graph inputs, in the order the module's forward takes them
    output_names: tuple[str, ...]  # graph outputs, in the order the module returns them (tensor, tuple or dict)
    dynamic_axes: Mapping[str, Mapping[int, str]]  # input/output name -> {axis: symbolic name}, e.g. {0: "batch"}
    make_inputs: (
        InputMaker  # batch size [, case] -> {input name: numpy array}; the reference gets the same arrays as tensors
    )
    output_shapes: Mapping[str, tuple[int | str, ...]] = field(
        default_factory=dict
    )  # expected shapes; str = a symbolic axis of the inputs
    opset: int = DEFAULT_OPSET  # ONNX opset of the exported graph
    atol: float = 1e-4  # largest |onnxruntime - PyTorch| allowed on any output element
    export_batch_size: int = 2  # batch size of the example the export traces (not 0 or 1: exporters specialise those)
    validation_batch_sizes: tuple[int, ...] = (1, 3, 7)  # batch sizes validated, none of them the export's
    extra_batch_sizes: tuple[int, ...] = ()  # more batch sizes to validate (e.g. 1000 for a small head)
    dynamo: bool = True  # torch.onnx's dynamo exporter (False: the TorchScript one)
    input_cases: tuple[
        str, ...
    ] = ()  # named input variants (e.g. mask combinations) validated at every batch size; make_inputs(n, case)
    output_atol: Mapping[str, float] = field(
        default_factory=dict
    )  # per-output tolerance overriding `atol` (e.g. fp16 logits)
    # Outputs compared by value in a named input case (default: every output). A stress case that drives some outputs
    # far out (the head's evidence logits in the hundreds) scales the unbounded ones too, where `atol` means nothing;
    # the outputs left out are still checked for shape, dtype and finiteness.
    case_outputs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # A graph that branches on a row-wise argmax (the CTMWA head feeds one_hot(argmax logits) to its weight nets)
    # flips that branch at near-ties under lower precision, and the outputs behind it jump. A row can only flip when
    # its top-two reference values on `argmax_of` differ by less than twice the graph's error there; such rows (gap
    # below max(argmax_margin, 2 x the case's max |diff| on argmax_of)) are ambiguous: `argmax_dependent` outputs
    # are not compared on them, and more than `max_ambiguous` of all rows ambiguous fails the validation.
    argmax_of: str | None = None  # output whose row-wise argmax the graph branches on
    argmax_dependent: tuple[str, ...] = ()  # outputs that jump when that argmax flips
    argmax_margin: float = 0.0  # smallest top-two gap that counts as unambiguous, whatever the observed error
    max_ambiguous: float = 0.05  # largest share of validated rows allowed to be ambiguous
    # Lower-precision variants (ctmwa_export.precision) are judged as embeddings, not element by element alone:
    min_cosine: float | None = (
        None  # smallest row-wise cosine of every 2-D float output against the reference; None = unchecked
    )
    # Predictions derived from the outputs (e.g. a head's argmax on an encoder's embeddings): outputs -> (N,) labels;
    # the share of rows where the graph's and the reference's labels agree must reach min_agreement.
    agreement: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None
    min_agreement: float = 1.0  # smallest share of agreeing rows over all cases

    def __post_init__(self) -> None:
        unknown = set(self.dynamic_axes) - set(self.input_names) - set(self.output_names)
        if unknown:
            raise ValueError(
                f"dynamic_axes names {sorted(unknown)} are neither inputs {self.input_names} nor outputs {self.output_names}"
            )
        if self.export_batch_size < 2:
            raise ValueError(f"export_batch_size {self.export_batch_size}: use 2 or more, exporters specialise 0 and 1")
        named = set(self.output_atol) | set(self.argmax_dependent) | {self.argmax_of} - {None}
        unknown = named.union(*map(set, self.case_outputs.values())) - set(self.output_names)
        if unknown:
            raise ValueError(
                f"output_atol / argmax_of / argmax_dependent / case_outputs name {sorted(unknown)}, not outputs {self.output_names}"
            )
        if set(self.case_outputs) - set(self.input_cases):
            raise ValueError(
                f"case_outputs names cases {sorted(set(self.case_outputs) - set(self.input_cases))}, not input_cases {self.input_cases}"
            )

    def tolerance(self, output: str) -> float:
        """Largest |onnxruntime - PyTorch| allowed on one output."""
        return self.output_atol.get(output, self.atol)

    def cases(self) -> list[tuple[int, str | None]]:
        """Every (batch size, input case) validated; case None where the spec names no cases."""
        return [(n, case) for n in self.batch_sizes for case in (self.input_cases or (None,))]

    def inputs_for(self, batch_size: int, case: str | None) -> dict[str, np.ndarray]:
        """make_inputs for one validation case."""
        return self.make_inputs(batch_size) if case is None else self.make_inputs(batch_size, case)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """Every batch size validated, in order, without repeats."""
        return tuple(dict.fromkeys((*self.validation_batch_sizes, *self.extra_batch_sizes)))


@dataclass(frozen=True)
class ValidationReport:
    """What a successful export checked."""

    graph: str  # the spec's name
    path: Path  # where the validated graph now is
    batch_sizes: tuple[int, ...]  # batch sizes compared against PyTorch
    max_abs_diff: dict[str, float]  # output name -> largest |onnxruntime - PyTorch| over all cases
    export_seconds: float  # time spent in torch.onnx.export
    validate_seconds: float  # time spent in checks
    rows: int = 0  # rows compared over all cases
    ambiguous_rows: int = 0  # rows whose argmax_dependent outputs were not compared (near-ties, see ExportSpec)
    min_cosine: dict[str, float] = field(
        default_factory=dict
    )  # output -> smallest row-wise cosine (specs with min_cosine)
    agreement: float | None = None  # share of rows whose spec.agreement labels match the reference's (None: unchecked)


def _as_outputs(result: object, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Module output (tensor, tuple/list, dict or object with attributes) -> {output name: numpy array}."""
    if isinstance(result, torch.Tensor):
        values = [result]
    elif isinstance(result, Mapping):
        values = [result[name] for name in names]
    elif isinstance(result, (tuple, list)):
        values = list(result)
    else:
        values = [getattr(result, name) for name in names]
    if len(values) != len(names):
        raise ValueError(f"module returned {len(values)} outputs, spec names {len(names)}: {list(names)}")
    return {name: value.detach().cpu().numpy() for name, value in zip(names, values)}


def _export(spec: ExportSpec, module: torch.nn.Module, path: Path) -> None:
    example = spec.make_inputs(spec.export_batch_size)
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[name])) for name in spec.input_names)
    if spec.dynamo:
        # Input axes that share a symbolic name share one Dim; output axes follow from the graph.
        dims: dict[str, torch.export.Dim] = {}
        dynamic = tuple(
            {
                axis: dims.setdefault(symbol, torch.export.Dim(symbol))
                for axis, symbol in spec.dynamic_axes.get(name, {}).items()
            }
            or None
            for name in spec.input_names
        )
        kwargs = {"dynamic_shapes": dynamic, "external_data": False, "verbose": False}
    else:
        kwargs = {"dynamic_axes": {name: dict(axes) for name, axes in spec.dynamic_axes.items()}}
    # The dynamo exporter prints progress to stdout; keep it in the debug log instead.
    captured = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(captured), warnings.catch_warnings():
        # Shared axis names (input_ids and attention_mask both "sequence") are intended; torch warns about them.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            opset_version=spec.opset,
            dynamo=spec.dynamo,
            **kwargs,
        )
    if captured.getvalue().strip():
        logger.debug("torch.onnx.export(%s): %s", spec.name, captured.getvalue().strip())
    _strip_provenance(path)


def _strip_provenance(path: Path) -> None:
    """Drop the exporter's per-node stack traces and doc strings: they hold absolute source paths of the machine that
    exported, so the same model exported from two checkouts would get different bytes (and a new model version)."""
    model = onnx.load(str(path))
    graphs = [model.graph, *model.functions]  # functions have nodes (and doc strings) like graphs
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            graphs.extend(attr.g for attr in node.attribute if attr.HasField("g"))
            graphs.extend(g for attr in node.attribute for g in attr.graphs)
        if hasattr(graph, "doc_string"):
            graph.doc_string = ""
    onnx.save(model, str(path))


def _root_cause(e: BaseException) -> str:
    """The innermost exception of a chain, without terminal colour codes: what a user needs to see first."""
    inner = e
    while inner.__cause__ is not None or (inner.__context__ is not None and not inner.__suppress_context__):
        inner = inner.__cause__ or inner.__context__
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(inner).__name__}: {inner}")
    return text if len(text) <= 1000 else text[:997] + "..."


def _axis_sizes(spec: ExportSpec, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for name, axes in spec.dynamic_axes.items():
        if name in inputs:
            for axis, symbol in axes.items():
                sizes.setdefault(symbol, int(inputs[name].shape[axis]))
    return sizes


def _ambiguous_rows(
    spec: ExportSpec, ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]
) -> np.ndarray | None:
    """Rows whose argmax on spec.argmax_of may differ between graph and reference; None when the spec names none."""
    if spec.argmax_of is None or not spec.argmax_dependent:
        return None
    r, g = ref[spec.argmax_of], got.get(spec.argmax_of)
    if r.ndim != 2 or r.shape[1] < 2 or g is None or g.shape != r.shape:
        return None  # the shape checks report it
    error = float(np.nanmax(np.abs(r.astype(np.float64) - g.astype(np.float64)), initial=0.0))
    top2 = np.sort(r.astype(np.float64), axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) < max(spec.argmax_margin, 2 * error)


@dataclass
class _Checks:
    """What _validate found besides its failures."""

    max_diff: dict[str, float]
    rows: int = 0
    ambiguous: int = 0
    min_cosine: dict[str, float] = field(default_factory=dict)
    agreeing: int = 0
    agreement_rows: int = 0

    @property
    def agreement(self) -> float | None:
        return self.agreeing / self.agreement_rows if self.agreement_rows else None


def _row_cosine(r: np.ndarray, g: np.ndarray) -> float:
    r, g = r.astype(np.float64), g.astype(np.float64)
    norms = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
    cos = np.where(norms > 0, (r * g).sum(axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
    return float(cos.min())


def _validate(spec: ExportSpec, reference: torch.nn.Module, path: Path) -> tuple[list[str], _Checks]:
    """Every check on the exported file against the PyTorch `reference`; returns (failures, what was measured)."""
    failures, checks = _validate_cases(spec, reference, path)
    if spec.min_cosine is not None:
        for name, worst in checks.min_cosine.items():
            if not worst >= spec.min_cosine:
                failures.append(
                    f"output {name!r} row-wise cosine against PyTorch down to {worst:.6f} < tolerance {spec.min_cosine:g}"
                )
    if spec.agreement is not None and checks.agreement is not None and not checks.agreement >= spec.min_agreement:
        failures.append(
            f"argmax agreement with PyTorch {checks.agreeing}/{checks.agreement_rows} = {checks.agreement:.4f} < tolerance {spec.min_agreement:g}"
        )
    return failures, checks


def _validate_cases(spec: ExportSpec, reference: torch.nn.Module, path: Path) -> tuple[list[str], _Checks]:
    failures: list[str] = []
    max_diff = {name: 0.0 for name in spec.output_names}
    checks = _Checks(max_diff)
    rows = ambiguous_total = 0
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001 - each check's failure is collected
        failures.append(f"onnx checker: {type(e).__name__}: {e}")
    try:
        session = create_session(path, RuntimeConfig(device="cpu"))
    except Exception as e:  # noqa: BLE001
        return [*failures, f"onnxruntime cannot load the graph: {e}"], checks
    if tuple(session.input_names) != spec.input_names:
        failures.append(f"graph inputs are {session.input_names}, spec says {list(spec.input_names)}")
    if tuple(session.output_names) != spec.output_names:
        failures.append(f"graph outputs are {session.output_names}, spec says {list(spec.output_names)}")
        return failures, checks
    for batch_size, case_name in spec.cases():
        inputs = spec.inputs_for(batch_size, case_name)
        case = (
            f"batch {batch_size}"
            + "".join(f", {symbol} {size}" for symbol, size in _axis_sizes(spec, inputs).items() if symbol != "batch")
            + (f", {case_name}" if case_name is not None else "")
        )
        try:
            with torch.no_grad():
                ref = _as_outputs(
                    reference(*(torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in spec.input_names)),
                    spec.output_names,
                )
        except Exception as e:  # noqa: BLE001
            failures.append(f"{case}: PyTorch reference failed: {type(e).__name__}: {e}")
            continue
        try:
            got = session.run({name: inputs[name] for name in spec.input_names})
        except Exception as e:  # noqa: BLE001 - e.g. a batch axis baked in at export
            failures.append(f"{case}: onnxruntime failed: {type(e).__name__}: {str(e)[:300]}")
            continue
        sizes = _axis_sizes(spec, inputs)
        ambiguous = _ambiguous_rows(spec, ref, got)
        rows += batch_size
        if ambiguous is not None:
            ambiguous_total += int(ambiguous.sum())
        if spec.agreement is not None and all(got[n].shape == ref[n].shape for n in spec.output_names):
            same = np.asarray(spec.agreement(got)) == np.asarray(spec.agreement(ref))
            checks.agreeing += int(same.sum())
            checks.agreement_rows += int(same.size)
        for name in spec.output_names:
            r, g = ref[name], got[name]
            expected = spec.output_shapes.get(name)
            if expected is not None:
                want = tuple(sizes.get(d, d) if isinstance(d, str) else d for d in expected)
                if g.shape != want:
                    failures.append(f"{case}: output {name!r} has shape {g.shape}, spec says {want}")
            if g.shape != r.shape:
                failures.append(f"{case}: output {name!r} has shape {g.shape}, PyTorch gives {r.shape}")
                continue
            if g.dtype != r.dtype:
                failures.append(f"{case}: output {name!r} has dtype {g.dtype}, PyTorch gives {r.dtype}")
            if ambiguous is not None and name in spec.argmax_dependent and len(r) == len(ambiguous):
                r, g = r[~ambiguous], g[~ambiguous]
            if r.size == 0:
                continue
            if r.dtype == np.bool_ or np.issubdtype(r.dtype, np.integer):
                diff = float(np.max(r.astype(np.int64) != g.astype(np.int64)))
            else:
                finite = np.isfinite(r) == np.isfinite(g)
                if not finite.all():
                    failures.append(f"{case}: output {name!r} is non-finite where PyTorch is not (or the reverse)")
                if case_name in spec.case_outputs and name not in spec.case_outputs[case_name]:
                    continue
                diff = float(np.nanmax(np.abs(r.astype(np.float64) - g.astype(np.float64))))
                if spec.min_cosine is not None and r.ndim == 2:
                    checks.min_cosine[name] = min(checks.min_cosine.get(name, 1.0), _row_cosine(r, g))
            max_diff[name] = max(max_diff[name], diff)
            if not diff <= spec.tolerance(name):
                failures.append(
                    f"{case}: output {name!r} max |onnxruntime - PyTorch| {diff:.3g} > tolerance {spec.tolerance(name):g}"
                )
    if rows and ambiguous_total > spec.max_ambiguous * rows:
        failures.append(
            f"{ambiguous_total} of {rows} rows have a near-tie on {spec.argmax_of!r} (top-two gap below twice the graph's error "
            f"there), more than {spec.max_ambiguous:.0%}: the graph is too imprecise for its argmax, or the inputs do not separate the classes"
        )
    checks.rows, checks.ambiguous = rows, ambiguous_total
    return failures, checks


def validate_onnx(spec: ExportSpec, path: str | Path, reference: torch.nn.Module) -> ValidationReport:
    """Validate an ONNX file that was not exported from PyTorch (e.g. composed with onnx.compose) against a reference
    module; raises one ExportValidationError listing every failure; the file is left where it is either way."""
    path = Path(path)
    t0 = time.perf_counter()
    failures, checks = _validate(spec, reference.eval(), path)
    if failures:
        raise ExportValidationError(spec.name, failures, max_abs_diff=max(checks.max_diff.values(), default=0.0))
    logger.info(
        "%s: validated at batch sizes %s%s (max |diff| %s%s%s)",
        spec.name,
        list(spec.batch_sizes),
        f" x cases {list(spec.input_cases)}" if spec.input_cases else "",
        ", ".join(f"{k} {v:.2g}" for k, v in checks.max_diff.items()),
        "".join(f"; min cosine {k} {v:.6f}" for k, v in checks.min_cosine.items()),
        f"; argmax agreement {checks.agreement:.4f}" if checks.agreement is not None else "",
    )
    return _report(spec, path, checks, 0.0, time.perf_counter() - t0)


def _report(spec: ExportSpec, path: Path, checks: _Checks, export_s: float, validate_s: float) -> ValidationReport:
    return ValidationReport(
        spec.name,
        path,
        spec.batch_sizes,
        checks.max_diff,
        export_s,
        validate_s,
        checks.rows,
        checks.ambiguous,
        dict(checks.min_cosine),
        checks.agreement,
    )


def export_and_validate(
    spec: ExportSpec, module: torch.nn.Module, out_path: str | Path, *, reference: torch.nn.Module | None = None
) -> ValidationReport:
    """Export `module` per `spec`, validate it against PyTorch, and move it to `out_path` only if every check passes.

    `reference` is the PyTorch module the graph must agree with (default: `module` itself), e.g. the model with
    its attention translators when `module` is their folded form.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    reference = module if reference is None else reference.eval()
    # The staging folder sits beside the destination so that the final move is a rename on one filesystem.
    staging = Path(tempfile.mkdtemp(dir=out_path.parent, prefix=f".export-{spec.name}-"))
    try:
        staged = staging / out_path.name
        t0 = time.perf_counter()
        try:
            _export(spec, module, staged)
        except Exception as e:
            raise ExportValidationError(spec.name, [f"torch.onnx.export failed: {_root_cause(e)}"]) from e
        t1 = time.perf_counter()
        failures, checks = _validate(spec, reference, staged)
        max_diff, rows, ambiguous = checks.max_diff, checks.rows, checks.ambiguous
        t2 = time.perf_counter()
        worst = max(max_diff.values(), default=0.0)
        if failures:
            raise ExportValidationError(spec.name, failures, max_abs_diff=worst)
        extra = sorted(p.name for p in staging.iterdir() if p != staged)
        if extra:
            raise ExportValidationError(
                spec.name, [f"export wrote extra files {extra}; the graph must be one self-contained file"]
            )
        os.replace(staged, out_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "%s: exported in %.1fs, validated at batch sizes %s%s (max |diff| %s) -> %s",
        spec.name,
        t1 - t0,
        list(spec.batch_sizes),
        f" x cases {list(spec.input_cases)}" if spec.input_cases else "",
        ", ".join(f"{k} {v:.2g} <= {spec.tolerance(k):g}" for k, v in max_diff.items()),
        out_path,
    )
    if ambiguous:
        logger.info(
            "%s: %d of %d rows were near-ties on %r; %s not compared there",
            spec.name,
            ambiguous,
            rows,
            spec.argmax_of,
            list(spec.argmax_dependent),
        )
    return _report(spec, out_path, checks, t1 - t0, t2 - t1)
