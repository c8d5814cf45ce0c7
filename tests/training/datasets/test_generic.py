"""Generic tables (CSV, TSV, JSONL, Parquet) with configurable columns and given or inferred classes."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctmwa_batch.errors import DatasetError
from ctmwa_training.datasets import GenericConfig, read_generic
from tests.training.datasets.raw import corrupt_jpeg, jpeg


def _images(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).write_bytes(jpeg(i))


def test_csv_with_paths_words_and_unimodal_labels(tmp_path):
    _images(tmp_path / "img", "a.jpg", "b.jpg", "c.jpg")
    (tmp_path / "img" / "bad.jpg").write_bytes(corrupt_jpeg())
    csv = tmp_path / "posts.csv"
    csv.write_bytes(
        b"post_id,text,image,label,t_label,v_label\n"
        b"007,hello,img/a.jpg,pos,pos,neu\n"  # id keeps its leading zeros
        b'8,"multi\nline, quoted",img/b.jpg,neg,,\n'  # no unimodal labels on this row
        b"9,caf\xe9,img/missing.jpg,neu,neu,neu\n"  # cp1252 byte; image file absent
        b"10,,img/c.jpg,,pos,pos\n"  # no label: dropped and counted
        b"11,broken,img/bad.jpg,pos,pos,pos\n"  # unreadable image
        b"12,no image,,neg,neg,neg\n"  # empty image path
    )
    result = read_generic(csv)
    rows = {r["post_id"]: r for r in result.table.to_pylist()}
    # Inferred classes: sorted words -> neg=0, neu=1, pos=2.
    assert {k: (r["label"], r["t_label"], r["v_label"]) for k, r in rows.items()} == {
        "007": (2, 2, 1),
        "8": (0, None, None),
        "9": (1, 1, 1),
        "11": (2, 2, 2),
        "12": (0, 0, 0),
    }
    assert rows["8"]["text"] == "multi\nline, quoted"
    assert rows["9"]["text"] == "caf\u00e9"
    assert rows["007"]["image"] == jpeg(0)
    assert [k for k, r in rows.items() if r["image"] is None] == ["9", "11", "12"]
    report = result.report
    assert report.labels == ["neg", "neu", "pos"]
    assert report.unimodal_labels is True
    assert (report.read, report.kept, report.dropped) == (6, 5, {"missing_label": 1})
    assert (report.missing_images, report.unreadable_images, report.replaced_chars) == (2, 1, 1)
    assert report.per_class == {"neg": 2, "neu": 1, "pos": 2}
    assert json.loads(result.table.schema.metadata[b"ctmwa.labels"]) == ["neg", "neu", "pos"]


def test_parquet_with_image_bytes_and_given_classes(tmp_path):
    table = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "caption": ["a", "b", None],
            "img": pa.array([jpeg(1), None, jpeg(3)], pa.binary()),
            "y": pa.array([0, 2, 1], pa.int64()),  # indices into the given names
        }
    )
    path = tmp_path / "posts.parquet"
    pq.write_table(table, path)
    config = GenericConfig(
        id_column="id",
        text_column="caption",
        image_column="img",
        label_column="y",
        labels=("positive", "neutral", "negative"),
    )
    result = read_generic(path, config)
    assert result.table.column("post_id").to_pylist() == ["1", "2", "3"]
    assert result.table.column("label").to_pylist() == [0, 2, 1]
    assert result.table.column("image").to_pylist() == [jpeg(1), None, jpeg(3)]
    assert result.report.unimodal_labels is False  # no t_label / v_label columns
    assert result.report.per_class == {"positive": 1, "neutral": 1, "negative": 1}
    assert (result.report.missing_images, result.report.missing_texts) == (1, 1)


def test_jsonl_numeric_labels_inferred(tmp_path):
    _images(tmp_path, "x.jpg")
    path = tmp_path / "posts.jsonl"
    path.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"post_id": "a", "text": "t", "image": "x.jpg", "label": 1},
                {"post_id": "b", "text": "u", "image": "x.jpg", "label": -1},
                {"post_id": "c", "text": "v", "image": "x.jpg", "label": 0},
            ]
        )
        + "\n"
    )
    result = read_generic(path)
    assert result.report.labels == ["-1", "0", "1"]  # sorted numerically, not as strings
    assert result.table.column("label").to_pylist() == [2, 0, 1]


def test_tsv_with_image_root(tmp_path):
    _images(tmp_path / "pics", "p.jpg")
    path = tmp_path / "meta" / "posts.tsv"
    path.parent.mkdir()
    path.write_text("post_id\ttext\timage\tlabel\n1\thi there\tp.jpg\tjoy\n")
    result = read_generic(path, GenericConfig(image_root=str(tmp_path / "pics")))
    assert result.table.column("image").to_pylist() == [jpeg(0)]
    assert result.table.column("text").to_pylist() == ["hi there"]


@pytest.mark.parametrize(
    ("body", "config", "message"),
    [
        (
            "post_id,text,label\n1,a,pos\n1,b,neg\n",
            GenericConfig(image_column=None),
            r"posts\.csv: row 2: duplicate id '1' in column 'post_id' \(first in row 1\)",
        ),
        (
            "post_id,text,label\n1,a,pos\n2,b,meh\n",
            GenericConfig(image_column=None, labels=("pos", "neg")),
            r"posts\.csv: row 2, column 'label': unknown label 'meh'; the classes are \['pos', 'neg'\]",
        ),
        (
            "post_id,text,label\n1,a,pos\n2,b,5\n",
            GenericConfig(image_column=None),
            r"labels mix class indices and words",
        ),
        (
            "post_id,text,label\n1,a,pos\n",
            GenericConfig(),
            r"posts\.csv: column 'image' not found; columns are \['post_id', 'text', 'label'\]; set --image-column",
        ),
        (
            "post_id,text,label,t_label\n1,a,pos,pos\n",
            GenericConfig(image_column=None),
            r"a text label column without an image label column",
        ),
        ("post_id,text,label\n,a,pos\n", GenericConfig(image_column=None), r"row 1 has an empty id"),
    ],
)
def test_generic_bad_input(tmp_path, body, config, message):
    path = tmp_path / "posts.csv"
    path.write_text(body)
    with pytest.raises(DatasetError, match=message):
        read_generic(path, config)


def test_generic_unknown_extension(tmp_path):
    path = tmp_path / "posts.xlsx"
    path.write_text("x")
    with pytest.raises(DatasetError, match=r"cannot tell the format .* set --format"):
        read_generic(path)
