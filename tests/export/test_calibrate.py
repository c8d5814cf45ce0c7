"""Temperature scaling: ECE and NLL helpers, the fit, and what it does to over-confident logits."""

from __future__ import annotations

import numpy as np
import pytest

from ctmwa_batch.errors import CtmwaError
from ctmwa_export.calibrate import calibration_report, expected_calibration_error, fit_temperature, nll, softmax


def sampled(n: int, scale: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z whose softmax is the true label distribution (labels drawn from it), returned times `scale`."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 3)) * 1.5
    p = softmax(z)
    labels = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return z * scale, labels


def test_ece_of_known_cases():
    probs = np.tile([0.8, 0.1, 0.1], (10, 1))
    assert expected_calibration_error(probs, np.zeros(10, int)) == pytest.approx(0.2)  # 80% sure, always right
    assert expected_calibration_error(probs, np.array([0] * 8 + [1] * 2)) == pytest.approx(0.0)  # 80% sure, 80% right
    assert np.isnan(expected_calibration_error(np.zeros((0, 3)), np.zeros(0, int)))


def test_over_confident_logits_get_a_temperature_above_one_and_a_lower_ece():
    logits, labels = sampled(20000, scale=4.0)
    report = calibration_report(logits, labels)
    assert report["temperature"] == pytest.approx(4.0, rel=0.1)
    assert report["ece_after"] < report["ece_before"] / 4
    assert report["nll_after"] < report["nll_before"]
    # Argmax, and so every predicted label, is untouched.
    assert (softmax(logits, report["temperature"]).argmax(1) == logits.argmax(1)).all()


def test_calibrated_logits_keep_a_temperature_near_one():
    logits, labels = sampled(20000, scale=1.0, seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.1)


def test_fit_minimises_nll():
    logits, labels = sampled(3000, scale=0.3, seed=2)  # under-confident: T < 1
    t = fit_temperature(logits, labels)
    assert t < 1
    assert nll(logits, labels, t) <= min(nll(logits, labels, t * 1.05), nll(logits, labels, t / 1.05))


def test_empty_split_is_an_error():
    with pytest.raises(CtmwaError, match="zero rows"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, int))
