"""The probe blend: the model's answer leans on a linear probe of the embeddings where that helps on the valid split.

On small or imbalanced training sets CTMWA's classifier can trail a plain logistic regression on the concatenated
embeddings (README, "The class bias and the probe blend"). After training, on the frozen best epoch, `fit_probe_blend`
fits such a probe (`CTMWA.probe`: the post label on [text · has_text, image · has_image, has_text, has_image], L2
chosen by valid log-loss, every training row) and picks a weight β from `WEIGHTS` on the valid split: the answer's
logits become logits_m + β · log_softmax(probe), kept at β = 0 (the paper's model alone) unless a β gains at least
`MIN_GAIN` valid weighted F1 without lowering valid accuracy. The class bias is chosen after it, on the blended
logits. β is saved with the weights (`probe_weight`) and folded into head.onnx like everything else; the backbone,
the weight nets and the training losses never see the probe.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ctmwa_training.data import FeatureBatch, FeatureSet
from ctmwa_training.evidence import EVAL_BATCH, L2_GRID, _nll, fit_logistic
from ctmwa_training.metrics import accuracy_f1
from ctmwa_training.model import CTMWA, PROBE_WEIGHT

logger = logging.getLogger(__name__)

METHODS = ("none", "valid_f1")
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # β candidates; 0 is the paper's model alone
MIN_GAIN = 0.002  # valid weighted-F1 gain below which β stays 0


def no_blend_report() -> dict:
    """The `probe_blend` entry when the blend is off."""
    return {"method": "none", "weight": 0.0}


@torch.no_grad()
def _parts(model: CTMWA, data: FeatureBatch) -> tuple[np.ndarray, np.ndarray]:
    # (logits_m, log_softmax(probe)) of the model in eval mode, both (N, C) float64.
    m, p = [], []
    for start in range(0, len(data), EVAL_BATCH):
        part = data.take(np.arange(start, min(start + EVAL_BATCH, len(data))))
        out = model(part.text, part.image, part.has_text, part.has_image)
        m.append(out.logits_m.double())
        p.append(
            torch.log_softmax(
                model.probe(model.probe_input(part.text, part.image, part.has_text, part.has_image)).double(), dim=1
            )
        )
    c = model.config.num_classes
    return (torch.cat(m).numpy(), torch.cat(p).numpy()) if m else (np.zeros((0, c)), np.zeros((0, c)))


def fit_probe_blend(model: CTMWA, data: FeatureSet, *, min_gain: float = MIN_GAIN) -> dict:
    """Fit the probe and choose β on the valid split, in place (nothing else changes); returns a JSON-ready report."""
    c = model.config.num_classes
    was_training = model.training
    model.eval()
    rows, valid = data.train_split(), data.valid
    x = model.probe_input(rows.text, rows.image, rows.has_text, rows.has_image)
    xv = model.probe_input(valid.text, valid.image, valid.has_text, valid.has_image)
    best = (math.inf, None, None, None)
    for l2 in L2_GRID:
        w, b = fit_logistic(x, rows.label, c, l2)
        score = _nll(xv, valid.label, w, b)
        if not math.isfinite(score):
            score = _nll(x, rows.label, w, b)
        if score < best[0]:
            best = (score, l2, w, b)
    nll, l2, w, b = best
    with torch.no_grad():
        model.probe.weight.copy_(w.float())
        model.probe.bias.copy_(b.float())
    logits_m, log_probe = _parts(model, valid)
    labels = valid.label.numpy()
    base_acc, base_f1 = accuracy_f1(labels, logits_m.argmax(1)) if len(labels) else (float("nan"), float("nan"))
    chosen, acc, f1 = 0.0, base_acc, base_f1
    figures = {}
    for weight in WEIGHTS:
        if not len(labels):
            break
        a, f = accuracy_f1(labels, (logits_m + weight * log_probe).argmax(1))
        figures[str(weight)] = {"valid_accuracy": a, "valid_f1_weighted": f}
        if a >= base_acc and f > f1 + 1e-12:
            chosen, acc, f1 = weight, a, f
    if f1 - base_f1 < min_gain:
        chosen, acc, f1 = 0.0, base_acc, base_f1
    with torch.no_grad():
        getattr(model, PROBE_WEIGHT).fill_(chosen)
    model.train(was_training)
    logger.info(
        "probe blend: L2 %g (valid log-loss %.4f); weight %g: valid weighted F1 %.4f -> %.4f, accuracy %.4f -> %.4f",
        l2,
        nll,
        chosen,
        base_f1,
        f1,
        base_acc,
        acc,
    )
    return {
        "method": "valid_f1",
        "weight": chosen,
        "probe_l2": l2,
        "probe_valid_nll": nll,
        "rows": int(len(labels)),
        "valid_accuracy_before": base_acc,
        "valid_f1_weighted_before": base_f1,
        "valid_accuracy_after": acc,
        "valid_f1_weighted_after": f1,
        "by_weight": figures,
    }
