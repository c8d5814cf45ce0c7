"""`prepare`: posts Parquet with splits and query flags, summary JSON, and the features rewrite around the embed step.

The contract test runs the real embed step on the tiny ONNX encoders of the shared fixture; one fault-injection test
hands prepare an embed step that loses columns, to show prepare refuses to publish such output.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctmwa_batch.errors import DatasetError
from ctmwa_batch.schema import FEATURES_SCHEMA
from ctmwa_training import prepare as prep
from tests.training.datasets.raw import make_balanced_mvsa_single, make_mvsa_single, make_tumemo


def _posts_only(root, out, *extra):
    return prep.main(["mvsa-single", "--root", str(root), "--out", str(out), "--posts-only", *extra])


def test_posts_only_writes_posts_and_summary(tmp_path, capsys):
    root = make_mvsa_single(tmp_path / "MVSA_Single")
    assert _posts_only(root, tmp_path / "out" / "features.parquet") == 0
    posts = pq.read_table(tmp_path / "out" / "features.posts.parquet")
    assert posts.column_names == ["post_id", "text", "image", "label", "t_label", "v_label", "split", "query"]
    assert posts.num_rows == 7
    assert json.loads(posts.schema.metadata[b"ctmwa.labels"]) == ["positive", "neutral", "negative"]
    assert not (tmp_path / "out" / "features.parquet").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["features.posts.parquet", "features.summary.json"]
    summary = json.loads((tmp_path / "out" / "features.summary.json").read_text())
    assert summary["read"]["kept"] == 7
    assert summary["read"]["dropped"] == {"contradiction": 2, "no_content": 1}
    assert summary["read"]["replaced_chars"] == 2
    assert sum(summary["splits"]["per_split"].values()) == 7
    printed = capsys.readouterr().out
    assert "mvsa-single from" in printed and "10 labelled, 7 kept, 3 dropped" in printed
    assert "replaced characters 2 in 1 texts" in printed


def test_posts_splits_and_query(tmp_path):
    root = make_balanced_mvsa_single(tmp_path / "MVSA_Single", (40, 40, 20))
    out = tmp_path / "features.parquet"
    assert _posts_only(root, out, "--seed", "5", "--query-fraction", "0.1") == 0
    posts = pq.read_table(tmp_path / "features.posts.parquet").drop_columns(["image"]).to_pylist()
    splits = [p["split"] for p in posts]
    assert {s: splits.count(s) for s in ("train", "valid", "test")} == {"train": 80, "valid": 10, "test": 10}
    query = [p for p in posts if p["query"]]
    assert len(query) == 8
    assert all(p["split"] == "train" and p["t_label"] is not None and p["v_label"] is not None for p in query)
    # Same seed, same splits; another seed, other splits.
    assert _posts_only(root, tmp_path / "again.parquet", "--seed", "5") == 0
    again = pq.read_table(tmp_path / "again.posts.parquet", columns=["post_id", "split", "query"]).to_pylist()
    assert again == [{k: p[k] for k in ("post_id", "split", "query")} for p in posts]
    assert _posts_only(root, tmp_path / "other.parquet", "--seed", "6") == 0
    other = pq.read_table(tmp_path / "other.posts.parquet", columns=["split"]).column("split").to_pylist()
    assert other != splits


def test_tumemo_query_without_unimodal_labels(tmp_path):
    root = make_tumemo(tmp_path / "TumEmo")
    out = tmp_path / "features.parquet"
    assert prep.main(["tumemo", "--root", str(root), "--out", str(out), "--posts-only", "--query-fraction", "1"]) == 0
    posts = pq.read_table(tmp_path / "features.posts.parquet")
    assert posts.schema.metadata[b"ctmwa.unimodal_labels"] == b"false"
    rows = posts.drop_columns(["image"]).to_pylist()
    # Query posts need a text and an image, not unimodal labels: 40 has no text, 9 no image.
    assert all(r["post_id"] not in ("9", "40") for r in rows if r["query"])
    summary = json.loads((tmp_path / "features.summary.json").read_text())
    assert summary["unimodal_labels"] is False


def test_split_file_leaves_out_unlisted_posts(tmp_path):
    root = make_mvsa_single(tmp_path / "MVSA_Single")
    split_file = tmp_path / "split.csv"
    split_file.write_text("id,split\n1,train\n2,train\n4,valid\n5,test\n3,train\n")  # 3 was dropped (contradiction)
    out = tmp_path / "f.parquet"
    assert _posts_only(root, out, "--split-file", str(split_file)) == 0
    posts = pq.read_table(tmp_path / "f.posts.parquet", columns=["post_id", "split"]).to_pylist()
    assert posts == [
        {"post_id": "1", "split": "train"},
        {"post_id": "2", "split": "train"},
        {"post_id": "4", "split": "valid"},
        {"post_id": "5", "split": "test"},
    ]
    summary = json.loads((tmp_path / "f.summary.json").read_text())
    assert summary["splits"]["not_in_split_file"] == 3  # 6, 7, 10
    assert summary["splits"]["unknown_in_split_file"] == 1  # 3


def test_cli_reports_dataset_errors(tmp_path, capsys):
    assert _posts_only(tmp_path / "nowhere", tmp_path / "f.parquet") == 2
    err = capsys.readouterr().err
    assert "DatasetError" in err and "labelResultAll.txt not found" in err
    assert not list(tmp_path.glob("*.tmp"))


def test_bundle_required_unless_posts_only(tmp_path, capsys):
    root = make_mvsa_single(tmp_path / "MVSA_Single")
    assert prep.main(["mvsa-single", "--root", str(root), "--out", str(tmp_path / "f.parquet")]) == 2
    assert "an encoder bundle is needed" in capsys.readouterr().err


def test_prepare_features_contract(tmp_path, encoder_bundle):
    root = make_mvsa_single(tmp_path / "MVSA_Single")
    config = prep.PrepareConfig(
        dataset="mvsa-single",
        root=str(root),
        out=str(tmp_path / "features.parquet"),
        bundle=str(encoder_bundle),
        batch_size=4,
    )
    summary = prep.prepare(config)  # the real embed path: the tiny ONNX encoders of the shared fixture
    features = pq.read_table(tmp_path / "features.parquet")
    assert features.schema.equals(FEATURES_SCHEMA, check_metadata=False)
    assert json.loads(features.schema.metadata[b"ctmwa.labels"]) == ["positive", "neutral", "negative"]
    assert features.schema.metadata[b"ctmwa.unimodal_labels"] == b"true"
    rows = {r["post_id"]: r for r in features.to_pylist()}
    assert set(rows) == {"1", "2", "4", "5", "6", "7", "10"}
    assert (rows["5"]["has_image"], rows["6"]["has_image"], rows["7"]["has_text"], rows["10"]["has_text"]) == (
        False,
        False,
        False,
        False,
    )
    assert summary["missing_modalities"] == {"posts": 7, "without_text": 2, "without_image": 2, "without_both": 0}
    on_disk = json.loads((tmp_path / "features.summary.json").read_text())
    assert on_disk["missing_modalities"] == summary["missing_modalities"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "MVSA_Single",
        "features.parquet",
        "features.posts.parquet",
        "features.summary.json",
    ]


def test_prepare_rejects_embed_output_without_labels(tmp_path):
    root = make_mvsa_single(tmp_path / "MVSA_Single")

    def lossy_embed(bundle_dir, input_path, output_path, **kwargs):
        posts = pq.read_table(input_path, columns=["post_id"])
        pq.write_table(
            posts.append_column("text_emb", pa.array([[0.0]] * posts.num_rows, pa.list_(pa.float32()))), output_path
        )

    config = prep.PrepareConfig(dataset="mvsa-single", root=str(root), out=str(tmp_path / "f.parquet"), bundle="e")
    with pytest.raises(DatasetError, match=r"the embed output lacks column\(s\) \['split', 'image_emb', 'label'"):
        prep.prepare(config, embed=lossy_embed)
    assert not (tmp_path / "f.parquet").exists()
    assert not list(tmp_path.glob("*tmp*"))
