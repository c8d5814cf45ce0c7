"""The epoch loop: train CTMWA on a `FeatureSet`, keep the best-validation epoch, measure it on the test split.

Metrics beyond the reference: the test split with every text (or every image) marked missing, so the
translators' stand-ins are measured; only rows that keep the other modality count there.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ctmwa_training.class_bias import fit_class_bias, no_bias_report
from ctmwa_training.data import FeatureBatch, FeatureSet
from ctmwa_training.errors import DatasetError
from ctmwa_training.evidence import evidence_metrics, fit_evidence
from ctmwa_training.meta import MetaWeightTrainer, TrainConfig
from ctmwa_training.metrics import accuracy_f1
from ctmwa_training.model import CTMWA, CTMWAConfig
from ctmwa_training.probe import fit_probe_blend, no_blend_report

logger = logging.getLogger(__name__)

EVAL_BATCH = 4096


@dataclass
class FitResult:
    """A trained model (best-validation weights) and its metrics."""

    model: CTMWA  # in eval mode, weights of `metrics["best_epoch"]`, evidence classifiers fitted
    metrics: dict  # JSON-ready: see `fit`
    history: list[dict] = field(default_factory=list)  # one entry per epoch
    class_bias: dict = field(
        default_factory=dict
    )  # {"method", "bias": [C floats], ...}: added to logits_m before argmax


@torch.no_grad()
def logits_of(model: CTMWA, data: FeatureBatch) -> torch.Tensor:
    """The answer's logits (N, C) of the model in eval mode on `data` (logits_m with the probe blend, no class bias)."""
    was_training = model.training
    model.eval()
    parts = [
        model(p.text, p.image, p.has_text, p.has_image).logits
        for p in (data.take(np.arange(s, min(s + EVAL_BATCH, len(data)))) for s in range(0, len(data), EVAL_BATCH))
    ]
    model.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, model.config.num_classes)


@torch.no_grad()
def evaluate(model: CTMWA, data: FeatureBatch, class_bias: torch.Tensor | None = None) -> dict[str, float]:
    """accuracy, f1_weighted, loss (CE of the answer's logits) and mean modality weights of the model on `data`.

    The prediction (and the weight nets' input) is argmax(logits + class_bias), logits with the probe blend."""
    was_training = model.training
    model.eval()
    logits, w_t, w_v = [], [], []
    for start in range(0, len(data), EVAL_BATCH):
        part = data.take(np.arange(start, min(start + EVAL_BATCH, len(data))))
        out = model(part.text, part.image, part.has_text, part.has_image, class_bias=class_bias)
        logits.append(out.logits)
        w_t.append(out.text_weight)
        w_v.append(out.image_weight)
    model.train(was_training)
    if not logits:
        return {"accuracy": float("nan"), "f1_weighted": float("nan"), "loss": float("nan"), "rows": 0}
    logits_m = torch.cat(logits)  # (N, C)
    predicted = (logits_m if class_bias is None else logits_m + class_bias).argmax(1)
    accuracy, f1 = accuracy_f1(data.label.numpy(), predicted.numpy())
    return {
        "accuracy": accuracy,
        "f1_weighted": f1,
        "loss": F.cross_entropy(logits_m, data.label).item(),
        "text_weight": torch.cat(w_t).mean().item(),
        "image_weight": torch.cat(w_v).mean().item(),
        "rows": len(data),
    }


def _batches(n: int, size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, size):
        yield order[start : start + size]


def _query_stream(query: FeatureBatch, size: int, generator: torch.Generator) -> Iterator[FeatureBatch]:
    # The query set is small; cycle through it, reshuffled at each pass.
    while True:
        for idx in _batches(len(query), size, generator):
            yield query.take(idx)


def fit(data: FeatureSet, model_config: CTMWAConfig, config: TrainConfig) -> FitResult:
    """Train for `config.epochs`, keep the best validation accuracy, return the model and metrics.

    Then, on the best epoch: the evidence classifiers (ctmwa_training.evidence) and the class bias (ctmwa_training.class_bias).

    metrics: mode, seed, epochs, best_epoch, valid_accuracy, valid_f1_weighted (both without the class bias),
    test_accuracy, test_f1_weighted, test_loss (with it), test_accuracy / test_f1_weighted_without_class_bias,
    class_bias (the choice and its valid figures), missing_text_test_accuracy / _f1_weighted,
    missing_image_test_accuracy / _f1_weighted, test_{text,image}_{evidence,weight}_auc (ctmwa_training.evidence),
    evidence (its fit), majority_test_accuracy (always predicting the most common train label), seconds_per_epoch,
    history.
    """
    meta = config.mode == "meta"
    if meta and len(data.query) == 0:
        raise DatasetError(
            f"{data.path}: meta mode needs a query set and this one is empty; read it with with_query=True"
        )
    torch.manual_seed(config.seed)
    model = CTMWA(model_config)
    trainer = MetaWeightTrainer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    queries = _query_stream(data.query, config.batch_size, generator) if meta else None

    history: list[dict] = []
    best_accuracy, best_epoch, best_state = -math.inf, 0, None
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        model.train()
        sums = {"outer": 0.0, "query": 0.0, "text_weight": 0.0, "image_weight": 0.0}
        steps = 0
        for idx in _batches(len(data.train), config.batch_size, generator):
            losses = trainer.step(data.train.take(idx), next(queries) if meta else None)
            for k in sums:
                sums[k] += getattr(losses, k)
            steps += 1
        trainer.end_epoch(epoch)
        seconds = time.perf_counter() - start
        valid = evaluate(model, data.valid)
        entry = {
            "epoch": epoch,
            "train_loss": sums["outer"] / steps,
            "query_loss": sums["query"] / steps if meta else None,
            "text_weight": sums["text_weight"] / steps if meta else None,
            "image_weight": sums["image_weight"] / steps if meta else None,
            "valid_accuracy": valid["accuracy"],
            "valid_f1_weighted": valid["f1_weighted"],
            "valid_loss": valid["loss"],
            "seconds": seconds,
        }
        history.append(entry)
        improved = valid["accuracy"] > best_accuracy
        if improved:
            best_accuracy, best_epoch = valid["accuracy"], epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        logger.info(
            "epoch %d/%d: train loss %.4f%s, valid acc %.4f f1 %.4f%s (%.1fs, %.0f rows/s)",
            epoch,
            config.epochs,
            entry["train_loss"],
            f", query loss {entry['query_loss']:.4f}, w_t {entry['text_weight']:.3f}, w_v {entry['image_weight']:.3f}"
            if meta
            else "",
            valid["accuracy"],
            valid["f1_weighted"],
            " *" if improved else "",
            seconds,
            len(data.train) / max(seconds, 1e-9),
        )

    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    # After training, on the frozen best epoch: the evidence classifiers, then the probe blend and the class bias
    # (both chosen on the valid split). The figures "as trained" are the model before either.
    evidence = fit_evidence(model, data)
    raw_test = evaluate(model, data.test)
    blend = fit_probe_blend(model, data) if config.probe_blend != "none" else no_blend_report()
    class_bias, bias_report = choose_class_bias(model, data, config)
    test = evaluate(model, data.test, class_bias)
    no_text = evaluate(model, data.test.take(data.test.has_image).without(text=True), class_bias)
    no_image = evaluate(model, data.test.take(data.test.has_text).without(image=True), class_bias)
    majority = int(torch.bincount(data.train.label, minlength=len(data.labels)).argmax())
    metrics = {
        "mode": config.mode,
        "seed": config.seed,
        "epochs": config.epochs,
        "best_epoch": best_epoch,
        "valid_accuracy": best_accuracy,
        "valid_f1_weighted": history[best_epoch - 1]["valid_f1_weighted"],
        "test_accuracy": test["accuracy"],
        "test_f1_weighted": test["f1_weighted"],
        "test_loss": test["loss"],
        "test_accuracy_without_class_bias": raw_test["accuracy"],  # as trained: no probe blend, no class bias
        "test_f1_weighted_without_class_bias": raw_test["f1_weighted"],
        "probe_blend": blend,
        "class_bias": bias_report,
        "test_text_weight": test["text_weight"],
        "test_image_weight": test["image_weight"],
        **evidence_metrics(model, data.test, class_bias),
        "evidence": evidence,
        "missing_text_test_accuracy": no_text["accuracy"],
        "missing_text_test_f1_weighted": no_text["f1_weighted"],
        "missing_image_test_accuracy": no_image["accuracy"],
        "missing_image_test_f1_weighted": no_image["f1_weighted"],
        "majority_test_accuracy": float((data.test.label == majority).float().mean()),
        "rows": {"train": len(data.train), "query": len(data.query), "valid": len(data.valid), "test": len(data.test)},
        "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history),
        "history": history,
    }
    logger.info(
        "best epoch %d: valid acc %.4f; test acc %.4f, weighted F1 %.4f; text missing %.4f, image missing %.4f",
        best_epoch,
        best_accuracy,
        test["accuracy"],
        test["f1_weighted"],
        no_text["accuracy"],
        no_image["accuracy"],
    )
    return FitResult(model=model, metrics=metrics, history=history, class_bias=bias_report)


def choose_class_bias(model: CTMWA, data: FeatureSet, config: TrainConfig) -> tuple[torch.Tensor | None, dict]:
    """The class bias `config.class_bias` asks for, chosen on the valid split: (bias (C,) or None, report)."""
    c = model.config.num_classes
    if config.class_bias == "none":
        return None, no_bias_report(c)
    values, report = fit_class_bias(logits_of(model, data.valid).numpy(), data.valid.label.numpy())
    logger.info(
        "class bias %s on %d valid rows: weighted F1 %.4f -> %.4f, accuracy %.4f -> %.4f",
        [round(v, 3) for v in report["bias"]],
        report["rows"],
        report["valid_f1_weighted_before"],
        report["valid_f1_weighted_after"],
        report["valid_accuracy_before"],
        report["valid_accuracy_after"],
    )
    return (torch.tensor(values, dtype=torch.float32) if np.any(values) else None), report
