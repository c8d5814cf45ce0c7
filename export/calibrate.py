"""Temperature scaling (Guo et al., 2017): one scalar T fitted on held-out logits so that softmax(logits / T) is
calibrated. Argmax, and so every predicted label, is unchanged; only the confidence moves.

`ctmwa-export head --calibrate --features F` fits T on the `valid` split of F at export time, bakes it into
head.onnx (probs = softmax(logits / T); `logits` stay raw) and records T and the expected calibration error
before and after in the manifest's `calibration` section.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from ctmwa_batch.errors import CtmwaError
from ctmwa_training.data import LABELS_KEY, read_features
from ctmwa_training.model import CTMWA

logger = logging.getLogger(__name__)

ECE_BINS = 15  # equal-width confidence bins, the usual choice in the calibration literature
# Search range of the inverse temperature 1/T; NLL is convex in it, so a golden-section search finds the optimum.
_BETA_RANGE = (1e-2, 1e2)
_SEARCH_STEPS = 200


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax(logits / T) in float64."""
    return np.exp(_log_softmax(np.asarray(logits, dtype=np.float64) / temperature))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / T)."""
    logp = _log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-logp[np.arange(len(labels)), labels].mean())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: over equal-width confidence bins, the row-weighted mean |accuracy - mean confidence|."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    # Bin k holds confidences in (k/bins, (k+1)/bins]; the first bin also holds 0.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for k in range(bins):
        in_bin = which == k
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) on (logits, labels)."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    if len(labels) == 0:
        raise CtmwaError("cannot fit a temperature on zero rows; the features file's 'valid' split is empty")
    # Golden-section search over log(beta), beta = 1/T: NLL is convex in beta, hence unimodal in log(beta).
    lo, hi = math.log(_BETA_RANGE[0]), math.log(_BETA_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_beta: float) -> float:
        return nll(logits, labels, 1.0 / math.exp(log_beta))

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(_SEARCH_STEPS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return 1.0 / math.exp((lo + hi) / 2)


def calibration_report(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Fit T on (logits, labels); the manifest's `calibration` section, ECE and NLL before and after."""
    temperature = fit_temperature(logits, labels)
    return {
        "method": "temperature",
        "temperature": temperature,
        "rows": int(len(labels)),
        "ece_bins": bins,
        "ece_before": expected_calibration_error(softmax(logits), labels, bins),
        "ece_after": expected_calibration_error(softmax(logits, temperature), labels, bins),
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, temperature),
    }


def calibrate_on_features(
    model: CTMWA, features: str | Path, labels: list[str], class_bias: list[float] | None = None
) -> dict[str, Any]:
    """Fit the temperature of `model` on the `valid` split of a features Parquet (missing modalities as marked).

    With a class bias the temperature scales the biased logits, as the head graph does: softmax((logits + b) / T)."""
    features = Path(features)
    c = model.config
    try:
        has_names = LABELS_KEY.encode() in (pq.read_schema(features).metadata or {})
    except OSError:
        has_names = True  # read_features says what is wrong with the file
    # A file that names its classes must name the model's; one that does not is taken to use the model's order.
    data = read_features(
        features, labels=None if has_names else labels, text_dim=c.text_dim, image_dim=c.image_dim, with_query=False
    )
    if data.labels != labels:
        raise CtmwaError(
            f"--features {features} has classes {data.labels}, the model {labels}; calibrate on features of the same label set"
        )
    valid = data.valid
    with torch.no_grad():
        logits = model.eval()(valid.text, valid.image, valid.has_text, valid.has_image).logits.double().numpy()
    if class_bias is not None:
        logits = logits + np.asarray(class_bias, dtype=np.float64)
    report = {**calibration_report(logits, valid.label.numpy()), "features": str(features), "split": "valid"}
    logger.info(
        "temperature scaling on %d valid rows of %s: T = %.3f; ECE %.4f -> %.4f, NLL %.4f -> %.4f",
        report["rows"],
        features.name,
        report["temperature"],
        report["ece_before"],
        report["ece_after"],
        report["nll_before"],
        report["nll_after"],
    )
    return report
