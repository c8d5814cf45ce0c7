"""Modality evidence and the class bias: fitted after training, never touching the paper's weight nets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ctmwa_training import evidence as E
from ctmwa_training.class_bias import fit_class_bias
from ctmwa_training.data import read_features
from ctmwa_training.fit import accuracy_f1, fit
from ctmwa_training.meta import MetaWeightTrainer, TrainConfig
from ctmwa_training.model import BACKBONE_MODULES, CTMWAConfig
from fixtures.features import CUES, synthetic_cues, synthetic_table, write_synthetic_features

MODEL = CTMWAConfig(text_dim=16, image_dim=16, embed_dim=16, num_classes=3, weight_net_hidden=16)
TRAINING = TrainConfig(seed=3, epochs=3, lr=0.02, inner_lr=0.05, wnet_lr=0.005)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return write_synthetic_features(
        tmp_path_factory.mktemp("features") / "f.parquet", n=600, num_classes=3, dim=16, seed=7
    )


def snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in params.items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[n], b[n]) for n in a)


def test_weight_nets_are_trained_by_the_query_step_alone(features, monkeypatch):
    """A real (small) training run: across every support, query and outer step and the fits after training, the
    weight nets change in the query steps only, and the query steps change nothing else."""
    log = []
    real = {name: getattr(MetaWeightTrainer, name) for name in ("support_step", "query_step", "outer_step")}

    def wrap(name):
        def method(self, *args, **kwargs):
            wnet, rest = (
                snapshot(self.model.weight_net_parameters()),
                snapshot(
                    {n: p for n, p in self.model.named_parameters() if not n.startswith(("txt_w_net", "img_w_net"))}
                ),
            )
            result = real[name](self, *args, **kwargs)
            log.append(
                (
                    name,
                    not same(wnet, self.model.weight_net_parameters()),
                    not same(rest, dict(self.model.named_parameters())),
                )
            )
            return result

        return method

    for name in real:
        monkeypatch.setattr(MetaWeightTrainer, name, wrap(name))
    fitted_wnets = {}
    real_fit_evidence = E.fit_evidence

    def fit_evidence(model, data):
        before_wnet, before_backbone = snapshot(model.weight_net_parameters()), snapshot(model.backbone_parameters())
        report = real_fit_evidence(model, data)
        fitted_wnets["unchanged"] = same(before_wnet, model.weight_net_parameters()) and same(
            before_backbone, model.backbone_parameters()
        )
        return report

    monkeypatch.setattr("ctmwa_training.fit.fit_evidence", fit_evidence)
    data = read_features(features)
    result = fit(data, MODEL, TRAINING)

    steps = len(data.train) // TRAINING.batch_size + (len(data.train) % TRAINING.batch_size > 0)
    assert [name for name, _, _ in log] == ["support_step", "query_step", "outer_step"] * steps * TRAINING.epochs
    assert all(moved_wnet and not moved_rest for name, moved_wnet, moved_rest in log if name == "query_step")
    assert not any(moved_wnet for name, moved_wnet, _ in log if name != "query_step")
    assert all(moved_rest for name, _, moved_rest in log if name == "outer_step")
    assert fitted_wnets == {"unchanged": True}
    # The optimisers' parameter sets: the outer SGD holds the backbone, the query Adam the weight nets, neither the evidence.
    trainer = MetaWeightTrainer(result.model, TRAINING)
    sgd = {id(p) for g in trainer.backbone_optimizer.param_groups for p in g["params"]}
    adam = {id(p) for g in trainer.wnet_optimizer.param_groups for p in g["params"]}
    assert sgd == {id(p) for p in result.model.backbone_parameters().values()}
    assert adam == {id(p) for p in result.model.weight_net_parameters().values()}
    assert not ({id(p) for p in result.model.evidence_parameters().values()} & (sgd | adam))
    # The evidence classifiers were fitted (they start at zero) and the metrics report them.
    assert any(p.abs().sum() > 0 for p in result.model.evidence_parameters().values())
    for key in ("test_text_evidence_auc", "test_image_evidence_auc", "test_text_weight_auc", "test_image_weight_auc"):
        assert 0.0 <= result.metrics[key] <= 1.0, key
    assert result.metrics["evidence"]["rows"]["text"] > 0 and result.metrics["class_bias"]["method"] == "valid_f1"


def test_evidence_tracks_the_modality_that_carries_the_cue(features):
    """On synthetic posts, evidence ranks text-only-cue posts above image-only-cue ones for the text, and the reverse."""
    data = read_features(features)
    model = fit(data, MODEL, TrainConfig(**{**TRAINING.__dict__, "epochs": 6})).model
    rows = data.train  # enough rows for a stable figure; the bench measures held-out posts
    cue = synthetic_cues(600, 3, 16, 7)[[int(p.rsplit("-", 1)[1]) for p in rows.post_id]]
    with torch.no_grad():
        out = model(rows.text, rows.image, rows.has_text, rows.has_image)
    both = (rows.has_text & rows.has_image).numpy()
    text_only, image_only = (cue == "text") & both, (cue == "image") & both
    t, v = out.text_evidence.numpy(), out.image_evidence.numpy()
    assert (
        E.auc(t[text_only], t[image_only]) > 0.85
    )  # 0.89 when written; the first (neck, post label) evidence: 0.75-0.8
    assert E.auc(v[image_only], v[text_only]) > 0.85  # 0.91
    assert ((t >= 0) & (t <= 1)).all() and ((v >= 0) & (v <= 1)).all()


def test_synthetic_cues_match_the_table():
    table = synthetic_table(300, 3, 8, seed=4)
    cue = synthetic_cues(300, 3, 8, seed=4)
    assert set(cue) <= set(CUES) and len(cue) == 300
    label, t_label, v_label = (np.asarray(table.column(c)) for c in ("label", "t_label", "v_label"))
    polar = label != 1
    assert (t_label[polar & (cue == "image")] == 1).all() and (
        v_label[polar & (cue == "image")] == label[polar & (cue == "image")]
    ).all()
    assert (v_label[polar & (cue == "text")] == 1).all() and (
        t_label[polar & (cue == "text")] == label[polar & (cue == "text")]
    ).all()
    assert ((t_label == label) & (v_label == label))[cue == "both"].all()


def test_auc_is_the_mann_whitney_statistic_with_half_ties():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 23).astype(float), rng.integers(0, 5, 17).astype(float)
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])
    assert E.auc(pos, neg) == pytest.approx(brute)
    assert E.auc([1.0, 2.0], [0.0]) == 1.0 and E.auc([0.0], [1.0, 2.0]) == 0.0
    assert np.isnan(E.auc([], [1.0]))


def test_carrier_masks_come_from_the_unimodal_labels():
    label, t_label, v_label = np.array([0, 0, 2, 1, 2]), np.array([0, 1, 1, 1, 2]), np.array([1, 0, 2, 1, 2])
    text, image = E.carrier_masks(label, t_label, v_label)
    assert text.tolist() == [True, False, False, False, False]
    assert image.tolist() == [False, True, True, False, False]


def test_class_bias_lifts_a_starved_class_without_losing_accuracy():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 600)
    logits = rng.normal(0, 1, (600, 3))
    logits[np.arange(600), labels] += 2.0
    logits[:, 1] -= 1.5  # class 1 is under-predicted
    before_acc, before_f1 = accuracy_f1(labels, logits.argmax(1))
    bias, report = fit_class_bias(logits, labels)
    after_acc, after_f1 = accuracy_f1(labels, (logits + bias).argmax(1))
    assert bias[1] > 0.5 and after_f1 > before_f1 + 0.05 and after_acc >= before_acc
    assert report["valid_f1_weighted_after"] == pytest.approx(after_f1) and report["bias"] == pytest.approx(
        bias.tolist()
    )
    assert bias[int(np.bincount(logits.argmax(1)).argmax())] == 0.0


def test_class_bias_stays_zero_without_a_real_gain():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 300)
    logits = rng.normal(0, 1, (300, 3))
    logits[np.arange(300), labels] += 3.0  # already balanced and accurate
    bias, report = fit_class_bias(logits, labels, min_gain=0.05)
    assert bias.tolist() == [0.0, 0.0, 0.0] and report["valid_f1_weighted_after"] == report["valid_f1_weighted_before"]


def test_backbone_modules_do_not_include_evidence_or_weight_nets():
    assert not set(BACKBONE_MODULES) & {"txt_e_c", "img_e_c", "txt_w_net", "img_w_net"}


def test_ctmwa_train_evidence_fits_a_stale_checkpoint_without_retraining(
    tiny_checkpoint, tiny_features, tmp_path, capsys
):
    """`ctmwa-train evidence` on a checkpoint whose evidence classifiers are gone: it loads, fits them on the
    frozen model (the backbone and weight nets unchanged), marks the neutral class, and updates metrics.json."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from ctmwa_training.cli import main
    from ctmwa_training.model import EVIDENCE_MODULES, load_checkpoint

    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ck)
    state = {
        k: v
        for k, v in load_file(str(ck / "model.safetensors")).items()
        if not k.startswith(EVIDENCE_MODULES) and k != "evidence_neutral"
    }
    save_file(state, str(ck / "model.safetensors"))
    metrics = json.loads((ck / "metrics.json").read_text())
    metrics.pop("evidence")
    (ck / "metrics.json").write_text(json.dumps(metrics))
    assert main(["evidence", "--checkpoint", str(ck), "--features", str(tiny_features)]) == 0
    assert "fitted modality evidence" in capsys.readouterr().out

    fitted, _, extra = load_checkpoint(ck)
    original, _, _ = load_checkpoint(tiny_checkpoint)
    for name, value in original.backbone_parameters().items():
        torch.testing.assert_close(fitted.backbone_parameters()[name], value)
    for name, value in original.weight_net_parameters().items():
        torch.testing.assert_close(fitted.weight_net_parameters()[name], value)
    for name, value in original.evidence_parameters().items():  # the same fit as training's own
        torch.testing.assert_close(fitted.evidence_parameters()[name], value)
    assert fitted.evidence_neutral.tolist() == [0.0, 1.0, 0.0] and extra["evidence"]["neutral_class"] == "neutral"
    refreshed = json.loads((ck / "metrics.json").read_text())
    assert refreshed["evidence"] == extra["evidence"] and 0.0 <= refreshed["test_text_evidence_auc"] <= 1.0


def test_ctmwa_train_evidence_names_a_missing_checkpoint(tmp_path, tiny_features, capsys):
    from ctmwa_training.cli import main

    assert main(["evidence", "--checkpoint", str(tmp_path / "nope"), "--features", str(tiny_features)]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_synthetic_class_shares_draw_an_imbalanced_set_and_keep_the_cues_in_step():
    from fixtures.features import SyntheticSpec

    spec = SyntheticSpec(class_shares=(0.59, 0.10, 0.31))
    table = synthetic_table(4000, 3, 8, seed=5, spec=spec)
    shares = np.bincount(np.asarray(table.column("label")), minlength=3) / 4000
    np.testing.assert_allclose(shares, [0.59, 0.10, 0.31], atol=0.03)
    cue, label, t_label = (
        synthetic_cues(4000, 3, 8, seed=5, spec=spec),
        np.asarray(table.column("label")),
        np.asarray(table.column("t_label")),
    )
    assert (t_label[cue == "image"] == 1).all() and (t_label[cue != "image"] == label[cue != "image"]).all()
    with pytest.raises(ValueError, match=r"class_shares \(0.5, 0.5\) must be 3 non-negative numbers that sum to 1"):
        synthetic_table(50, 3, 8, seed=5, spec=SyntheticSpec(class_shares=(0.5, 0.5)))


def test_probe_blend_leans_on_the_probe_where_the_model_is_weak_and_stays_off_otherwise(features):
    """An untrained CTMWA is near chance: the blend takes a weight > 0 and lifts valid weighted F1 without lowering
    valid accuracy. With min_gain out of reach, the weight stays 0 and the answer is the model's own."""
    from ctmwa_training.model import CTMWA
    from ctmwa_training.probe import WEIGHTS, fit_probe_blend

    data = read_features(features)
    torch.manual_seed(0)
    model = CTMWA(MODEL).eval()
    report = fit_probe_blend(model, data)
    assert report["weight"] in WEIGHTS and report["weight"] > 0 and float(model.probe_weight) == report["weight"]
    assert report["valid_f1_weighted_after"] > report["valid_f1_weighted_before"] + 0.1
    assert report["valid_accuracy_after"] >= report["valid_accuracy_before"]
    with torch.no_grad():
        out = model(data.valid.text, data.valid.image, data.valid.has_text, data.valid.has_image)
    assert accuracy_f1(data.valid.label.numpy(), out.logits.argmax(1).numpy())[1] == pytest.approx(
        report["valid_f1_weighted_after"]
    )
    assert all(p.abs().sum() == 0 for p in model.evidence_parameters().values())  # only the probe and its weight moved

    off = fit_probe_blend(model, data, min_gain=1.0)
    assert off["weight"] == 0.0 and float(model.probe_weight) == 0.0
    with torch.no_grad():
        out = model(data.valid.text, data.valid.image, data.valid.has_text, data.valid.has_image)
    torch.testing.assert_close(out.logits, out.logits_m)
