"""Per-class logit bias chosen on the validation split, so that a class the model under-predicts is not starved.

The multimodal classifier's argmax rarely picks a class whose posts look like "no cue" (neutral): its logits
sit just below a polar class's on many of them. Adding a bias b_c to the logits before softmax and argmax moves
the decision boundaries without retraining. `fit_class_bias` picks b by coordinate ascent over a grid, maximising
the weighted F1 on the validation rows while never lowering their accuracy; the zero bias is kept unless a
change gains at least `min_gain` of weighted F1. The bias is stored in the checkpoint (config.json `class_bias`)
and baked into head.onnx before the temperature (probs = softmax((logits + b) / T)), so `logits`, `probs`, the
predicted label and everything that depends on it (the weight nets' input, the evidence) agree.
"""

from __future__ import annotations

import numpy as np

from ctmwa_training.metrics import accuracy_f1

METHODS = ("none", "valid_f1")
GRID = np.round(np.arange(-2.0, 2.0001, 0.05), 4)  # candidate values of one class's bias (logit units)
ROUNDS = 4  # coordinate-ascent passes over the classes
MIN_GAIN = 0.002  # weighted-F1 gain on the valid split below which the zero bias is kept


def fit_class_bias(logits: np.ndarray, labels: np.ndarray, *, min_gain: float = MIN_GAIN) -> tuple[np.ndarray, dict]:
    """(bias (C,), report) maximising weighted F1 of argmax(logits + bias) on (logits, labels), accuracy not lower.

    The bias of the class the model predicts most is held at zero (softmax and argmax ignore a common shift).
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    c = logits.shape[1]
    base_acc, base_f1 = accuracy_f1(labels, logits.argmax(1))
    bias = np.zeros(c)
    best = (base_f1, base_acc)
    if len(labels) == 0:
        return bias, _report(bias, base_acc, base_f1, base_acc, base_f1, len(labels))
    anchor = int(np.bincount(logits.argmax(1), minlength=c).argmax())
    for _ in range(ROUNDS):
        changed = False
        for k in range(c):
            if k == anchor:
                continue
            for value in GRID:
                trial = bias.copy()
                trial[k] = value
                acc, f1 = accuracy_f1(labels, (logits + trial).argmax(1))
                # Strictly better F1 without losing accuracy; on an F1 tie, the smaller bias.
                if acc >= base_acc and (
                    f1 > best[0] + 1e-12 or (abs(f1 - best[0]) <= 1e-12 and abs(value) < abs(bias[k]))
                ):
                    best, bias, changed = (f1, acc), trial, True
        if not changed:
            break
    if best[0] - base_f1 < min_gain:
        bias = np.zeros(c)
        best = (base_f1, base_acc)
    return bias, _report(bias, base_acc, base_f1, best[1], best[0], len(labels))


def no_bias_report(num_classes: int) -> dict:
    """The checkpoint's `class_bias` entry when none is used."""
    return {"method": "none", "bias": [0.0] * num_classes}


def _report(bias: np.ndarray, acc0: float, f10: float, acc1: float, f11: float, rows: int) -> dict:
    return {
        "method": "valid_f1",
        "bias": [float(x) for x in bias],
        "rows": int(rows),
        "valid_accuracy_before": acc0,
        "valid_f1_weighted_before": f10,
        "valid_accuracy_after": acc1,
        "valid_f1_weighted_after": f11,
    }
