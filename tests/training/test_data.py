"""Features Parquet reader: what it reads, and one test per DatasetError (each names column, value and fix)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ctmwa_training.data import read_features
from ctmwa_training.errors import DatasetError
from fixtures.features import SyntheticSpec, synthetic_table

DIM = 8


def table(n=60, **spec) -> pa.Table:
    return synthetic_table(n, num_classes=3, dim=DIM, seed=1, spec=SyntheticSpec(**spec))


def write(tmp_path, t: pa.Table, name="features.parquet"):
    path = tmp_path / name
    pq.write_table(t, path)
    return path


def replace(t: pa.Table, column: str, values, type=None) -> pa.Table:
    i = t.schema.get_field_index(column)
    return t.set_column(
        i, pa.field(column, type or t.schema.field(column).type), pa.array(values, type or t.schema.field(column).type)
    )


def test_reads_splits_query_and_missing_modalities(tmp_path):
    t = table(200)
    fs = read_features(write(tmp_path, t))
    split = np.array(t.column("split").to_pylist())
    n_train = int((split == "train").sum())
    assert fs.labels == ["positive", "neutral", "negative"] and fs.unimodal_labels
    assert (fs.text_dim, fs.image_dim) == (DIM, DIM)
    assert len(fs.query) == round(0.1 * n_train) and len(fs.train) + len(fs.query) == n_train
    assert not set(fs.query.post_id) & set(fs.train.post_id)
    assert len(fs.valid) == int((split == "valid").sum()) and len(fs.test) == int((split == "test").sum())
    # query rows carry their own unimodal labels, not copies of the multimodal one
    rows = {pid: i for i, pid in enumerate(t.column("post_id").to_pylist())}
    expected_t = [t.column("t_label")[rows[p]].as_py() for p in fs.query.post_id]
    assert fs.query.t_label.tolist() == expected_t
    # missing text: zeros, has_text false; present rows hold the file's numbers
    has_text = np.array(t.column("has_text").to_pylist())
    assert (~fs.train.has_text).sum() > 0
    assert fs.train.text[~fs.train.has_text].abs().sum() == 0
    first = fs.train.post_id[0]
    assert torch.allclose(fs.train.text[0], torch.tensor(t.column("text_emb")[rows[first]].as_py()))
    assert has_text.sum() < 200


def test_query_rows_are_the_rows_marked_in_the_file(tmp_path):
    t = table(200, query_fraction=0.05)
    marked = set(np.array(t.column("post_id").to_pylist())[np.array(t.column("query").to_pylist())])
    fs = read_features(write(tmp_path, t))
    assert set(fs.query.post_id) == marked


def test_late_fusion_keeps_the_whole_train_split(tmp_path):
    t = table(100)
    fs = read_features(write(tmp_path, t), with_query=False)
    assert len(fs.query) == 0 and len(fs.train) == t.column("split").to_pylist().count("train")


def test_rows_with_neither_modality_are_dropped(tmp_path, caplog):
    t = table(60)
    t = replace(t, "has_text", [False] * 60)
    has_image = [i % 2 == 0 and h for i, h in enumerate(t.column("has_image").to_pylist())]
    t = replace(t, "has_image", has_image)
    with caplog.at_level(logging.WARNING):
        fs = read_features(write(tmp_path, t), with_query=False)
    assert "neither text nor image" in caplog.text
    assert len(fs.train) + len(fs.valid) + len(fs.test) == sum(has_image) < 30


def test_missing_column(tmp_path):
    path = write(tmp_path, table().drop_columns(["label"]))
    with pytest.raises(DatasetError, match=r"column\(s\) \['label'\] missing") as e:
        read_features(path)
    assert str(path) in str(e.value)


def test_wrong_embedding_width_names_row_and_expected_width(tmp_path):
    t = table()
    values = t.column("text_emb").to_pylist()
    values[5] = [0.1] * (DIM - 1)
    bad_id = t.column("post_id")[5].as_py()
    path = write(tmp_path, replace(t, "text_emb", values))
    with pytest.raises(DatasetError, match=rf"'text_emb' has width 7 at post_id '{bad_id}'.*width 8"):
        read_features(path)


def test_embedding_width_differs_from_the_model(tmp_path):
    path = write(tmp_path, table())
    with pytest.raises(DatasetError, match=r"'image_emb' has width 8 .*the model expects width 512"):
        read_features(path, image_dim=512)


def test_label_out_of_range(tmp_path):
    t = table()
    labels = t.column("label").to_pylist()
    labels[3] = 5
    path = write(tmp_path, replace(t, "label", labels))
    bad_id = t.column("post_id")[3].as_py()
    with pytest.raises(DatasetError, match=rf"'label' has value 5 at post_id '{bad_id}'.*0\.\.2.*--labels"):
        read_features(path)


def test_unimodal_label_out_of_range(tmp_path):
    t = table()
    values = t.column("v_label").to_pylist()
    values[0] = -2
    with pytest.raises(DatasetError, match=r"'v_label' has value -2"):
        read_features(write(tmp_path, replace(t, "v_label", values)))


def test_empty_split(tmp_path):
    t = table()
    split = ["test" if s == "valid" else s for s in t.column("split").to_pylist()]
    with pytest.raises(DatasetError, match=r"split 'valid' is empty.*'valid': 0"):
        read_features(write(tmp_path, replace(t, "split", split)))


def test_unknown_split_value(tmp_path):
    t = table()
    split = t.column("split").to_pylist()
    split[7] = "dev"
    with pytest.raises(DatasetError, match=r"'split' has value\(s\) \['dev'\]"):
        read_features(write(tmp_path, replace(t, "split", split)))


def test_query_rows_without_unimodal_labels(tmp_path):
    t = table()
    t = replace(t, "t_label", [None] * t.num_rows)
    path = write(tmp_path, t)
    with pytest.raises(
        DatasetError, match=r"query row\(s\) have no 't_label'.*--no-unimodal-labels.*ctmwa.unimodal_labels=false"
    ):
        read_features(path)


def test_declared_without_unimodal_labels_uses_the_multimodal_label(tmp_path, caplog):
    t = table(unimodal_labels=False)  # metadata ctmwa.unimodal_labels=false, t/v labels null
    with caplog.at_level(logging.INFO):
        fs = read_features(write(tmp_path, t))
    assert not fs.unimodal_labels and "multimodal label for all three heads" in caplog.text
    assert torch.equal(fs.query.t_label, fs.query.label) and torch.equal(fs.query.v_label, fs.query.label)
    # the flag works on a file that says nothing, even without the t/v columns
    bare = (
        table()
        .drop_columns(["t_label", "v_label"])
        .replace_schema_metadata({"ctmwa.labels": json.dumps(["a", "b", "c"])})
    )
    fs = read_features(write(tmp_path, bare, "bare.parquet"), unimodal_labels=False)
    assert torch.equal(fs.query.t_label, fs.query.label)
    with pytest.raises(DatasetError, match=r"\['t_label', 'v_label'\] missing.*--no-unimodal-labels"):
        read_features(tmp_path / "bare.parquet")


def test_no_query_rows(tmp_path):
    t = replace(table(), "query", [False] * 60)
    with pytest.raises(DatasetError, match=r"no train row has 'query' true.*--mode late_fusion"):
        read_features(write(tmp_path, t))


def test_label_names_from_metadata_flag_or_fallback(tmp_path, caplog):
    t = table()
    assert read_features(write(tmp_path, t), labels=["pos", "neu", "neg"]).labels == ["pos", "neu", "neg"]
    plain = write(tmp_path, t.replace_schema_metadata(None), "plain.parquet")
    with caplog.at_level(logging.WARNING):
        assert read_features(plain).labels == ["class_0", "class_1", "class_2"]
    assert "pass --labels" in caplog.text
    with pytest.raises(DatasetError, match=r"'label' has value 2 .*0\.\.1"):
        read_features(plain, labels=["pos", "neg"])
    broken = write(tmp_path, t.replace_schema_metadata({"ctmwa.labels": "[pos"}), "broken.parquet")
    with pytest.raises(DatasetError, match=r"metadata ctmwa.labels is not JSON.*--labels"):
        read_features(broken)


def test_modality_flag_without_embedding(tmp_path):
    t = table()
    values = t.column("image_emb").to_pylist()
    i = next(i for i, v in enumerate(values) if v is not None)
    values[i] = None
    with pytest.raises(DatasetError, match=r"has_image is true but 'image_emb' is null at post_id"):
        read_features(write(tmp_path, replace(t, "image_emb", values)))


def test_non_finite_embedding(tmp_path):
    t = table()
    values = t.column("text_emb").to_pylist()
    i = next(i for i, v in enumerate(values) if v is not None)
    values[i] = [float("nan")] * DIM
    with pytest.raises(DatasetError, match=r"'text_emb' has NaN or infinite values at post_id"):
        read_features(write(tmp_path, replace(t, "text_emb", values)))


def test_wrong_column_types_and_nulls(tmp_path):
    t = table()
    as_text = replace(t, "label", [str(v) for v in t.column("label").to_pylist()], pa.string())
    with pytest.raises(DatasetError, match=r"'label' has type string; expected integer"):
        read_features(write(tmp_path, as_text, "a.parquet"))
    labels = t.column("label").to_pylist()
    labels[2] = None
    nulls = t.set_column(t.schema.get_field_index("label"), "label", pa.array(labels, pa.int64()))
    with pytest.raises(DatasetError, match=r"'label' is null at post_id"):
        read_features(write(tmp_path, nulls, "b.parquet"))
    flat = replace(t, "text_emb", [1.0] * 60, pa.float32())
    with pytest.raises(DatasetError, match=r"'text_emb' has type float; expected list<float32>"):
        read_features(write(tmp_path, flat, "c.parquet"))


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "features.parquet"
    path.write_text("post_id,label\n")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        read_features(path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_features(tmp_path / "missing.parquet")
