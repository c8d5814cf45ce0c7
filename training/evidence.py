"""Modality evidence: how strongly the text (or the image) on its own supports the predicted sentiment.

The paper's weight nets learn *loss weights* for the training step; as an attribution they run the wrong way
(bench/bench_evidence.py). The evidence is a separate pair of classifiers, `txt_e_c` and `img_e_c` (one linear
layer each over the raw text and image embeddings), fitted after training, the backbone and the weight nets frozen
and untouched: multinomial logistic regression of each modality's *own* label (t_label on the text, v_label on
the image; the post label where the dataset has no unimodal labels) over every training row that has the
modality (query rows included), the L2 strength chosen by validation log-loss.

With p = that classifier's probabilities and c the predicted class, the evidence is p_c / (p_c + p_neutral): the
odds that the modality on its own says c rather than "no sentiment" (0.5 where c is neutral itself), or p_c
where the labels have no neutral class (`CTMWA.evidence`). Read against neutral, a modality that shows no
sentiment scores low for a polar prediction whatever the other classes' shares; measured, this is what tracks
where the sentiment cue is (bench/bench_evidence.py, README).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from ctmwa_training.data import FeatureBatch, FeatureSet
from ctmwa_training.metrics import accuracy_f1
from ctmwa_training.model import CTMWA, EVIDENCE_NEUTRAL

logger = logging.getLogger(__name__)

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # L2 strengths tried (on standardised inputs); the valid split picks one
LBFGS_STEPS = 200
EVAL_BATCH = 4096


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counting half (Mann-Whitney); nan if a side is empty."""
    positive, negative = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    values = np.concatenate([positive, negative])
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    # Average ranks over ties.
    start = 0
    while start < len(values):
        stop = start + 1
        while stop < len(values) and sorted_values[stop] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop]] = (start + stop + 1) / 2
        start = stop
    n_pos = len(positive)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * len(negative)))


def carrier_masks(label: np.ndarray, t_label: np.ndarray, v_label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(text carries it, image carries it): rows whose text label equals the post's and image label does not, and
    the reverse. Rows where both or neither agree are in neither mask."""
    text = (t_label == label) & (v_label != label)
    image = (v_label == label) & (t_label != label)
    return text, image


@torch.no_grad()
def _scores(model: CTMWA, data: FeatureBatch, class_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    # (text_evidence, image_evidence, text_weight, image_weight), each (N,), in batches.
    parts = []
    for start in range(0, len(data), EVAL_BATCH):
        part = data.take(np.arange(start, min(start + EVAL_BATCH, len(data))))
        out = model(part.text, part.image, part.has_text, part.has_image, class_bias=class_bias)
        parts.append((out.text_evidence, out.image_evidence, out.text_weight, out.image_weight))
    if not parts:
        return tuple(torch.zeros(0) for _ in range(4))
    return tuple(torch.cat(x) for x in zip(*parts))


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (L2 on standardised x, L-BFGS); returns (W (C, D), b (C,)) acting on raw x."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=LBFGS_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + l2 * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    w = weight.detach() / std  # fold the standardisation into the layer
    return w, bias.detach() - w @ mean


def logistic_baseline(
    train: FeatureBatch, valid: FeatureBatch, test: FeatureBatch, num_classes: int
) -> tuple[float, float]:
    """Test (accuracy, weighted F1) of a logistic regression on [text_emb, image_emb, has_text, has_image], L2 chosen
    by valid accuracy: the obvious alternative the benches print beside CTMWA."""

    def x(b: FeatureBatch) -> torch.Tensor:
        return torch.cat([b.text, b.image, b.has_text[:, None].float(), b.has_image[:, None].float()], dim=1)

    best = (-1.0, None)
    for l2 in L2_GRID:
        w, b = fit_logistic(x(train), train.label, num_classes, l2)
        acc, _ = accuracy_f1(valid.label.numpy(), (x(valid).double() @ w.T + b).argmax(1).numpy())
        if acc > best[0]:
            best = (acc, (w, b))
    w, b = best[1]
    return accuracy_f1(test.label.numpy(), (x(test).double() @ w.T + b).argmax(1).numpy())


def _nll(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    return F.cross_entropy(x.double() @ w.T + b, y).item() if len(y) else float("nan")


NEUTRAL_NAMES = ("neutral",)  # a class of these names (any case) carries no sentiment


def neutral_index(labels: list[str]) -> int | None:
    """Index of the class that carries no sentiment (MVSA's "neutral"), or None where the labels have none."""
    found = [k for k, name in enumerate(labels) if str(name).strip().lower() in NEUTRAL_NAMES]
    return found[0] if found else None


def fit_evidence(model: CTMWA, data: FeatureSet) -> dict:
    """Fit `txt_e_c` / `img_e_c` (and set the neutral class) of a trained model in place; nothing else changes.
    Returns a JSON-ready report."""
    c = model.config.num_classes
    rows = data.train_split()
    valid = data.valid
    target = (
        "unimodal label (t_label, v_label)"
        if data.unimodal_labels
        else "post label (the dataset has no unimodal labels)"
    )
    neutral = neutral_index(data.labels)
    report: dict = {
        "method": f"logistic regression of each modality's {target} on its raw embedding; evidence = "
        + ("p(predicted) / (p(predicted) + p(neutral))" if neutral is not None else "p(predicted) (no neutral class)"),
        "neutral_class": None if neutral is None else data.labels[neutral],
        "rows": {},
    }
    for side, module, x, y, present, xv, yv, present_v in (
        ("text", model.txt_e_c, rows.text, rows.t_label, rows.has_text, valid.text, valid.t_label, valid.has_text),
        ("image", model.img_e_c, rows.image, rows.v_label, rows.has_image, valid.image, valid.v_label, valid.has_image),
    ):
        x, y, xv, yv = x[present], y[present], xv[present_v], yv[present_v]
        best = (math.inf, None, None, None)
        for l2 in L2_GRID:
            w, b = fit_logistic(x, y, c, l2)
            score = _nll(xv, yv, w, b)
            score = score if math.isfinite(score) else _nll(x, y, w, b)
            if score < best[0]:
                best = (score, l2, w, b)
        score, l2, w, b = best
        with torch.no_grad():
            module.weight.copy_(w.float())
            module.bias.copy_(b.float())
        report[f"{side}_l2"] = l2
        report[f"{side}_valid_nll"] = score
        report["rows"][side] = int(len(y))
        logger.info("%s evidence: logistic regression on %d rows, L2 %g, valid log-loss %.4f", side, len(y), l2, score)
    with torch.no_grad():
        flag = getattr(model, EVIDENCE_NEUTRAL)
        flag.zero_()
        if neutral is not None:
            flag[neutral] = 1.0
    return report


def evidence_metrics(
    model: CTMWA, data: FeatureBatch, class_bias: torch.Tensor | None = None, prefix: str = "test"
) -> dict:
    """AUCs of the evidence and of the paper's weights for "this modality carries the post's label", from unimodal labels.

    Text: rows whose text label is the post's and image label is not, against the reverse; image: the reverse.
    Only rows with both modalities count. Null (nan) where the data has no such rows (no unimodal labels).
    """
    was_training = model.training
    model.eval()
    ev_t, ev_v, w_t, w_v = _scores(model, data, class_bias)
    model.train(was_training)
    both = (data.has_text & data.has_image).numpy()
    text, image = carrier_masks(data.label.numpy(), data.t_label.numpy(), data.v_label.numpy())
    text, image = text & both, image & both
    out = {}
    for name, t_score, v_score in (("evidence", ev_t, ev_v), ("weight", w_t, w_v)):
        t_score, v_score = t_score.numpy(), v_score.numpy()
        out[f"{prefix}_text_{name}_auc"] = auc(t_score[text], t_score[image])
        out[f"{prefix}_image_{name}_auc"] = auc(v_score[image], v_score[text])
    out[f"{prefix}_evidence_auc_rows"] = {"text_carries": int(text.sum()), "image_carries": int(image.sum())}
    return out
