"""Bundle assembly: exported graphs, tokenizer, calibration and manifest into a bundle folder, published whole.

    export_encoders  CLIP -> image_encoder.onnx, text_encoder.onnx, tokenizer.json + manifest (encoders-only bundle)
    export_head      checkpoint -> head.onnx (+ end_to_end.onnx) joined to a copy of an encoders bundle (full bundle)

Every graph is exported and validated (ctmwa_export.encoders, ctmwa_export.head, ctmwa_export.end_to_end) in a staging folder beside
the destination; only a bundle that passed every check is moved into place, so a failure leaves nothing behind.
File names and manifest fields are ctmwa_batch.model.bundle's: this module only decides what goes in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx
import torch

from ctmwa_batch.errors import BundleError, CtmwaError
from ctmwa_batch.model import bundle as bundle_layout
from ctmwa_batch.model.bundle import END_TO_END, HEAD, IMAGE_ENCODER, TEXT_ENCODER, TOKENIZER, Bundle
from ctmwa_batch.schema import IMAGE_EMB, TEXT_EMB
from ctmwa_export import precision as variants
from ctmwa_export.calibrate import calibrate_on_features
from ctmwa_export.encoders import (
    EncoderExportConfig,
    ImageEncoder,
    TextEncoder,
    check_preprocessing_parity,
    image_encoder_spec,
    image_spec_from_processor,
    legacy_pooling,
    load_clip,
    specs_for_bundle,
    text_encoder_spec,
    text_spec_from_tokenizer,
    write_tokenizer,
)
from ctmwa_export.end_to_end import write_end_to_end
from ctmwa_export.head import MASK_CASES, HeadExportConfig, export_head_graph, tolerances
from ctmwa_export.spec import ValidationReport, export_and_validate
from ctmwa_training.model import CTMWA, load_checkpoint

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"  # written by ctmwa-train beside the checkpoint


# --------------------------------------------------------------------------------------------------- folders


def graph_signature(report: ValidationReport) -> dict:
    """Input and output names, dtypes and shapes of an exported graph, with its validated max difference (manifest `graphs`)."""
    model = onnx.load(str(report.path), load_external_data=False)

    def describe(values: Any) -> dict:
        out = {}
        for v in values:
            t = v.type.tensor_type
            out[v.name] = {
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in t.shape.dim],
            }
        return out

    return {
        "inputs": describe(model.graph.input),
        "outputs": describe(model.graph.output),
        "max_abs_diff": report.max_abs_diff,
    }


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an existing, non-empty bundle folder unless `overwrite` (checked before any export work)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise BundleError(
            f"bundle folder {str(out_dir)!r} exists and is not empty; choose another --out or pass --overwrite"
        )


def publish(staging: Path, out_dir: Path) -> None:
    """Move the finished bundle into place; an old bundle there is replaced only after the new one is complete."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- encoders


def export_encoders(config: EncoderExportConfig) -> Bundle:
    """Export, validate and parity-check both encoders; write the encoders-only bundle to config.out_dir."""
    out_dir = Path(config.out_dir)
    prepare_out_dir(out_dir, config.overwrite)
    model, tokenizer, processor = load_clip(config.source, config.revision)
    image = image_spec_from_processor(processor, jpeg_draft=config.jpeg_draft)
    text = text_spec_from_tokenizer(tokenizer, model, config.max_text_length)
    dim = int(model.config.projection_dim)
    legacy = legacy_pooling(model)
    common = {
        "atol": config.atol,
        "opset": config.opset,
        "extra_batch_sizes": config.extra_batch_sizes,
        "dynamo": config.dynamo,
    }
    fp32_cosine = variants.TOLERANCES[variants.FP32].min_cosine  # the fp32 graphs report their cosine figures too
    specs = {
        "image_encoder": dataclasses.replace(image_encoder_spec(image, dim, **common), min_cosine=fp32_cosine),
        "text_encoder": dataclasses.replace(
            text_encoder_spec(text, int(model.config.text_config.vocab_size), dim, legacy_pooling=legacy, **common),
            min_cosine=fp32_cosine,
        ),
    }
    modules = {"image_encoder": ImageEncoder(model, image.mean, image.std), "text_encoder": TextEncoder(model)}
    names = {"image_encoder": IMAGE_ENCODER, "text_encoder": TEXT_ENCODER}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.staging-"))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; a bundle is read by other users (workers)
    try:
        by_graph = {graph: export_and_validate(specs[graph], modules[graph], staging / names[graph]) for graph in names}
        reports = {names[graph]: report for graph, report in by_graph.items()}
        # int8 / fp16 variants derived from the fp32 graphs, each validated against PyTorch with its own tolerance
        variant_entries = variants.write_variants(config.precisions, specs, modules, staging, by_graph)
        write_tokenizer(tokenizer, staging / TOKENIZER)
        import transformers  # here, not at the top: `ctmwa-export --help` stays quick

        bundle = bundle_layout.write_manifest(
            staging,
            image=image,
            text=text,
            dims={TEXT_EMB: dim, IMAGE_EMB: dim},
            encoder={
                "source": config.source,
                "revision": config.revision,
                "architecture": type(model).__name__,
                "text_pooling": "argmax(input_ids)"
                if legacy
                else f"first eos_token_id ({model.config.text_config.eos_token_id})",
                "exporter": "torch.onnx dynamo" if config.dynamo else "torch.onnx torchscript",
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
            opset=config.opset,
            graphs={name: graph_signature(report) for name, report in reports.items()},
            variants=variant_entries,
        )
        check_preprocessing_parity(bundle, model, tokenizer, processor, config.atol)
        publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    bundle = bundle_layout.load_bundle(out_dir)
    logger.info("encoders bundle %s written to %s", bundle.model_version, out_dir)
    return bundle


# --------------------------------------------------------------------------------------------------- head


def _labels(extra: dict[str, Any], config: HeadExportConfig, num_classes: int, checkpoint: Path) -> list[str]:
    labels = list(config.labels) if config.labels is not None else extra.get("labels")
    if labels is None:
        raise CtmwaError(
            f"checkpoint {checkpoint} names no labels (config.json has no 'labels'); pass --labels a,b,c ({num_classes} names)"
        )
    if (
        len(labels) != num_classes
        or len(set(labels)) != len(labels)
        or not all(isinstance(x, str) and x for x in labels)
    ):
        raise CtmwaError(
            f"labels {labels} do not name the model's {num_classes} classes once each; pass --labels with {num_classes} distinct names"
        )
    return [str(x) for x in labels]


def _class_bias(extra: dict[str, Any], num_classes: int, checkpoint: Path) -> dict[str, Any]:
    entry = extra.get("class_bias")
    if entry is None:  # a checkpoint from before the class bias existed
        return {"method": "none", "bias": [0.0] * num_classes}
    bias = entry.get("bias") if isinstance(entry, dict) else None
    if not (
        isinstance(bias, list)
        and len(bias) == num_classes
        and all(isinstance(b, (int, float)) and math.isfinite(b) for b in bias)
    ):
        raise CtmwaError(
            f"checkpoint {checkpoint}: config.json 'class_bias' {entry!r} is not {num_classes} finite numbers under 'bias'; "
            "fix or remove the entry (removing it means no class bias)"
        )
    return {**entry, "bias": [float(b) for b in bias]}


def _training_metrics(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / METRICS_FILE
    if not path.is_file():
        logger.warning("%s has no %s; the manifest's training_metrics stay empty", checkpoint, METRICS_FILE)
        return {}
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CtmwaError(f"cannot read {path}: {e}; re-run ctmwa-train or delete the file") from e
    # The per-epoch history is for plots, not for the bundle; the summary stays.
    return {k: v for k, v in metrics.items() if k != "history"} if isinstance(metrics, dict) else {}


def _check_dims(encoders: bundle_layout.Bundle, model: CTMWA) -> None:
    dims, c = encoders.dims, model.config
    for key, want in ((TEXT_EMB, c.text_dim), (IMAGE_EMB, c.image_dim)):
        if dims.get(key) != want:
            raise BundleError(
                f"the encoders in {str(encoders.root)!r} give {key} of width {dims.get(key)}, the checkpoint's model takes {want}; "
                "export the head with a checkpoint trained on features from these encoders (ctmwa-batch embed with this bundle)"
            )


def export_head(
    checkpoint_dir: str | Path,
    encoders_dir: str | Path,
    out_dir: str | Path,
    config: HeadExportConfig = HeadExportConfig(),
) -> Path:
    """Export the checkpoint's head, validate it, and write encoders + head as a full bundle at out_dir; returns out_dir."""
    checkpoint, out_dir = Path(checkpoint_dir), Path(out_dir)
    prepare_out_dir(out_dir, config.overwrite)
    encoders = bundle_layout.load_bundle(encoders_dir)
    encoders.require(*bundle_layout.ENCODER_FILES)
    if encoders.has_head:
        raise BundleError(f"{str(encoders.root)!r} already has a head; pass an encoders-only bundle to --encoders")
    model, model_config, extra = load_checkpoint(checkpoint)
    _check_dims(encoders, model)
    labels = _labels(extra, config, model_config.num_classes, checkpoint)
    class_bias = _class_bias(extra, model_config.num_classes, checkpoint)

    calibration: dict[str, Any] = {"method": "none", "temperature": 1.0}
    if config.calibrate:
        calibration = calibrate_on_features(model, config.features, labels, class_bias=class_bias["bias"])

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.staging-"))
    try:
        bundle_dir = staging / "bundle"
        # The head is exported and validated before anything is copied: a failure leaves no bundle anywhere.
        report = export_head_graph(
            model, staging / HEAD, config, temperature=calibration["temperature"], class_bias=class_bias["bias"]
        )
        files, graphs = {HEAD: staging / HEAD}, {HEAD: graph_signature(report)}
        if config.end_to_end:
            e2e = write_end_to_end(encoders, staging / HEAD, staging / END_TO_END, model_config.num_classes)
            files[END_TO_END], graphs[END_TO_END] = e2e.path, graph_signature(e2e)
        shutil.copytree(encoders.root, bundle_dir)
        os.chmod(bundle_dir, 0o755)
        # each encoder variant: the head's argmax agreement on its embeddings against fp32's
        variant_updates = variants.agreement_updates(encoders, model, specs_for_bundle(encoders))
        head_info = {
            "checkpoint": str(checkpoint),
            "model_config": dataclasses.asdict(model_config),
            "translators": "folded: o(v(relu(W_c x + b))), o∘v merged"
            if config.fold_translators
            else "attention (unfolded)",
            "precision": "fp16" if config.fp16 else "fp32",
            "opset": config.opset,
            "validated_batch_sizes": list(report.batch_sizes),
            "validated_mask_cases": list(MASK_CASES),
            "tolerance": tolerances(model, config),
            "near_tie_rows": f"{report.ambiguous_rows} of {report.rows} validated rows: top-two logits closer than twice the graph's error; weights not compared there",
            "weights_from": "one_hot(argmax logits)",
            "class_bias": class_bias,
            "probe_blend": extra.get("probe_blend") or {"method": "none", "weight": 0.0},
            "evidence": {
                "method": "txt_e_c / img_e_c: logistic regression of each modality's own label on its raw embedding, "
                "fitted after training; evidence = p(predicted) / (p(predicted) + p(neutral)), p(predicted) without "
                "a neutral class; 0 in the graph where the modality is missing",
                **(extra.get("evidence") or {}),
            },
            "missing_text": "img2txt(image_emb)",
            "missing_image": "txt2img(text_encoder(text_emb)), or of img2txt(image_emb) where the text is missing too",
            "best_epoch": extra.get("best_epoch"),
            "trained_at": extra.get("created_at"),
        }
        bundle_layout.add_head(
            bundle_dir,
            files,
            labels=labels,
            num_classes=model_config.num_classes,
            graphs=graphs,
            head=head_info,
            calibration=calibration,
            training_metrics=_training_metrics(checkpoint),
            variants=variant_updates,
        )
        publish(bundle_dir, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    bundle = bundle_layout.load_bundle(out_dir)
    logger.info(
        "full bundle %s written to %s (labels %s, %s)", bundle.model_version, out_dir, labels, head_info["precision"]
    )
    return out_dir
