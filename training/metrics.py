"""Classification metrics shared by training, the class bias and the benches (numpy only)."""

from __future__ import annotations

import numpy as np


def accuracy_f1(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Accuracy and support-weighted F1 (sklearn's average='weighted')."""
    if len(y_true) == 0:
        return float("nan"), float("nan")
    accuracy = float((y_true == y_pred).mean())
    f1 = 0.0
    for c in np.unique(y_true):
        tp = float(((y_pred == c) & (y_true == c)).sum())
        fp = float(((y_pred == c) & (y_true != c)).sum())
        fn = float(((y_pred != c) & (y_true == c)).sum())
        f1 += (2 * tp / (2 * tp + fp + fn)) * (fn + tp) / len(y_true)
    return accuracy, f1
