"""ctmwa-train end to end on small synthetic features: it learns, it is deterministic, it keeps the best epoch."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from ctmwa_batch.errors import DatasetError
from ctmwa_training.cli import main
from ctmwa_training.data import read_features
from ctmwa_training.fit import accuracy_f1, evaluate
from ctmwa_training.model import load_checkpoint
from fixtures.features import write_synthetic_features

# Tiny widths and a larger step size than the reference: the synthetic set is small and the test must be quick.
CONFIG = json.dumps({"model": {"embed_dim": 16}, "training": {"lr": 0.02, "inner_lr": 0.05, "wnet_lr": 0.005}})


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return write_synthetic_features(
        tmp_path_factory.mktemp("features") / "f.parquet", n=600, num_classes=3, dim=16, seed=7
    )


@pytest.fixture(scope="module")
def run(features, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert (
        main(["--features", str(features), "--out", str(out), "--epochs", "6", "--seed", "3", "--config", CONFIG]) == 0
    )
    return out


def test_writes_checkpoint_and_metrics(run):
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    metrics = json.loads((run / "metrics.json").read_text())
    for key in (
        "valid_accuracy",
        "test_accuracy",
        "test_f1_weighted",
        "missing_text_test_accuracy",
        "missing_image_test_accuracy",
        "best_epoch",
    ):
        assert isinstance(metrics[key], (int, float)), key
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, 7))
    config = json.loads((run / "config.json").read_text())
    assert config["labels"] == ["positive", "neutral", "negative"]
    assert config["training"]["seed"] == 3 and config["training"]["epochs"] == 6 and config["training"]["lr"] == 0.02
    assert (
        config["model"]["text_dim"] == 16 and config["model"]["embed_dim"] == 16 and config["model"]["num_classes"] == 3
    )


def test_learns_well_beyond_the_majority_class(run):
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] > metrics["majority_test_accuracy"] + 0.25, metrics
    # the translators stand in for a missing modality well enough to beat guessing, too
    assert metrics["missing_text_test_accuracy"] > metrics["majority_test_accuracy"] + 0.1
    assert metrics["missing_image_test_accuracy"] > metrics["majority_test_accuracy"] + 0.1


def test_checkpoint_holds_the_best_validation_epoch(run, features):
    metrics = json.loads((run / "metrics.json").read_text())
    accuracies = [h["valid_accuracy"] for h in metrics["history"]]
    assert metrics["best_epoch"] == accuracies.index(max(accuracies)) + 1
    model, _, extra = load_checkpoint(run)
    data = read_features(features)
    bias = torch.tensor(extra["class_bias"]["bias"], dtype=torch.float32)
    # test_accuracy is the shipped answer: the probe blend and the class bias chosen after training
    assert float(model.probe_weight) == extra["probe_blend"]["weight"] == metrics["probe_blend"]["weight"]
    assert evaluate(model, data.test, bias)["accuracy"] == pytest.approx(metrics["test_accuracy"])
    # valid_accuracy is the best epoch's, as trained: before either
    with torch.no_grad():
        model.probe_weight.zero_()
    assert evaluate(model, data.valid)["accuracy"] == pytest.approx(metrics["valid_accuracy"])
    assert evaluate(model, data.test)["accuracy"] == pytest.approx(metrics["test_accuracy_without_class_bias"])
    assert extra["best_epoch"] == metrics["best_epoch"]


def test_same_seed_same_metrics(run, features, tmp_path):
    assert (
        main(["--features", str(features), "--out", str(tmp_path), "--epochs", "6", "--seed", "3", "--config", CONFIG])
        == 0
    )
    first = json.loads((run / "metrics.json").read_text())
    second = json.loads((tmp_path / "metrics.json").read_text())
    strip = lambda m: {k: v for k, v in m.items() if k not in ("history", "seconds_per_epoch")}  # noqa: E731
    assert strip(first) == strip(second)
    assert [h["train_loss"] for h in first["history"]] == [h["train_loss"] for h in second["history"]]


def test_late_fusion_mode(features, tmp_path):
    assert (
        main(
            [
                "--features",
                str(features),
                "--out",
                str(tmp_path),
                "--epochs",
                "2",
                "--mode",
                "late_fusion",
                "--config",
                CONFIG,
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["mode"] == "late_fusion" and metrics["rows"]["query"] == 0
    assert metrics["history"][0]["query_loss"] is None


def test_user_errors_are_one_line_and_exit_2(features, tmp_path, capsys):
    assert main(["--features", str(tmp_path / "none.parquet"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctmwa-train: DatasetError:") and "none.parquet" in err and "\n" not in err
    assert (
        main(["--features", str(features), "--out", str(tmp_path), "--config", '{"training": {"lr_decy": true}}']) == 2
    )
    assert "lr_decy" in capsys.readouterr().err
    assert main(["--features", str(features), "--out", str(tmp_path), "--config", '{"model": {"num_classes": 7}}']) == 2
    assert "num_classes = 7" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()


def test_prepare_dispatches_to_training_prepare(monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("ctmwa_training.prepare")
    fake.__doc__ = "Raw datasets to features."
    fake.add_arguments = lambda parser: parser.add_argument("--dataset", required=True)

    def run(args):
        calls.append(args.dataset)
        if args.dataset == "bad":
            raise DatasetError("bad dataset folder; point --dataset at it")
        return 0

    fake.run = run
    monkeypatch.setitem(sys.modules, "ctmwa_training.prepare", fake)
    assert main(["prepare", "--dataset", "mvsa_single"]) == 0
    assert main(["prepare", "--dataset", "bad"]) == 2
    assert calls == ["mvsa_single", "bad"]
    assert (
        capsys.readouterr().err.strip()
        == "ctmwa-train prepare: DatasetError: bad dataset folder; point --dataset at it"
    )


def test_weighted_f1_matches_the_definition():
    y_true = torch.tensor([0, 0, 0, 1, 1, 2]).numpy()
    y_pred = torch.tensor([0, 0, 1, 1, 2, 2]).numpy()
    accuracy, f1 = accuracy_f1(y_true, y_pred)
    # per class F1: 0 -> 0.8 (support 3), 1 -> 0.5 (2), 2 -> 2/3 (1)
    assert accuracy == pytest.approx(4 / 6)
    assert f1 == pytest.approx((0.8 * 3 + 0.5 * 2 + (2 / 3) * 1) / 6)
