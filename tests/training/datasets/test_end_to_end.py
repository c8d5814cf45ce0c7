"""A raw MVSA-Single folder -> `ctmwa-train prepare` (tiny ONNX encoders, the scoring embed path) -> `ctmwa-train`.

Nothing is stubbed: the encoders are a tiny random CLIP exported the real way (tests/conftest.py), `prepare` runs
through the `ctmwa-train` command line, and training writes a checkpoint and metrics.json.
"""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from ctmwa_batch.schema import FEATURES_SCHEMA
from ctmwa_training.cli import main as ctmwa_train
from tests.training.datasets.raw import make_balanced_mvsa_single, make_mvsa_single

# As in tests/training/test_cli.py: tiny widths and larger steps than the reference, so a few epochs learn.
CONFIG = json.dumps({"model": {"embed_dim": 16}, "training": {"lr": 0.02, "inner_lr": 0.05, "wnet_lr": 0.005}})
PER_CLASS = (60, 50, 40)


def _raw_folder(tmp_path):
    """Balanced learnable posts plus the hand-checked messy ones of make_mvsa_single, in one MVSA-Single folder."""
    root = make_balanced_mvsa_single(tmp_path / "MVSA_Single", PER_CLASS)
    messy = make_mvsa_single(tmp_path / "messy")
    for path in (messy / "data").iterdir():
        shutil.copy(path, root / "data" / path.name)
    messy_lines = (messy / "labelResultAll.txt").read_text().splitlines()[1:]
    with (root / "labelResultAll.txt").open("a") as f:
        f.write("\n".join(messy_lines) + "\n")
    return root


@pytest.mark.slow
def test_raw_mvsa_single_to_trained_model(tmp_path, encoder_bundle, capsys):
    root = _raw_folder(tmp_path)
    features = tmp_path / "features.parquet"
    assert (
        ctmwa_train(
            [
                "prepare",
                "mvsa-single",
                "--root",
                str(root),
                "--bundle",
                str(encoder_bundle),
                "--out",
                str(features),
                "--device",
                "cpu",
                "--batch-size",
                "32",
            ]
        )
        == 0
    )
    assert "160 labelled, 157 kept, 3 dropped" in capsys.readouterr().out

    # Features: the contract's columns, the label metadata, and the missing modalities of the messy posts.
    table = pq.read_table(features)
    assert table.schema.equals(FEATURES_SCHEMA, check_metadata=False)
    assert json.loads(table.schema.metadata[b"ctmwa.labels"]) == ["positive", "neutral", "negative"]
    assert table.schema.metadata[b"ctmwa.unimodal_labels"] == b"true"
    rows = {r["post_id"]: r for r in table.to_pylist()}
    assert len(rows) == sum(PER_CLASS) + 7
    assert [i for i in ("5", "6") if not rows[i]["has_image"]] == ["5", "6"]  # missing, corrupt
    assert [i for i in ("7", "10") if not rows[i]["has_text"]] == ["7", "10"]  # missing, whitespace only
    assert rows["4"]["has_text"] and rows["4"]["has_image"]  # the non-UTF-8 text was decoded and embedded
    dim = len(rows["1"]["text_emb"])
    assert dim == len(rows["1"]["image_emb"]) > 0
    assert sum(v * v for v in rows["1"]["text_emb"]) == pytest.approx(1.0, abs=1e-4)  # L2-normalised CLIP features
    splits = [r["split"] for r in rows.values()]
    # 157 posts at 8:1:1 = 125.6 / 15.7 / 15.7: each share within one post, the two largest fractions rounded up.
    assert {s: splits.count(s) for s in ("train", "valid", "test")} == {"train": 125, "valid": 16, "test": 16}
    query = [r for r in rows.values() if r["query"]]
    assert len(query) == 12  # round(0.1 * 125), half to even as the training reader rounds
    assert all(r["split"] == "train" and r["has_text"] and r["has_image"] for r in query)
    summary = json.loads((tmp_path / "features.summary.json").read_text())
    assert summary["missing_modalities"] == {"posts": 157, "without_text": 2, "without_image": 2, "without_both": 0}

    # Training on them: checkpoint and sane metrics.
    model = tmp_path / "model"
    assert ctmwa_train(["--features", str(features), "--out", str(model), "--epochs", "3", "--config", CONFIG]) == 0
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["rows"] == {"train": 113, "query": 12, "valid": 16, "test": 16}
    assert 1 <= metrics["best_epoch"] <= 3
    for key in ("valid_accuracy", "test_accuracy", "test_f1_weighted", "majority_test_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    # Class colours and class words carry the label through random tiny encoders: far better than the majority.
    assert metrics["test_accuracy"] > metrics["majority_test_accuracy"] + 0.2, metrics
    assert json.loads((model / "config.json").read_text())["labels"] == ["positive", "neutral", "negative"]
