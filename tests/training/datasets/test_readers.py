"""MVSA-Single, MVSA-Multiple and TumEmo readers against hand-computed labels and counts."""

from __future__ import annotations

import json

import pytest

from ctmwa_batch.errors import DatasetError
from ctmwa_training.datasets import (
    POSTS_SCHEMA,
    ReadOptions,
    combine,
    decode_text,
    majority,
    read_mvsa_multiple,
    read_mvsa_single,
    read_tumemo,
)
from ctmwa_training.datasets.common import check_image
from tests.training.datasets.raw import (
    MVSA_MULTIPLE_EXPECTED,
    MVSA_SINGLE_EXPECTED,
    MVSA_SINGLE_HAS_IMAGE,
    NON_UTF8_TEXT,
    TUMEMO_EXPECTED,
    jpeg,
    make_mvsa_multiple,
    make_mvsa_single,
    make_tumemo,
    write_post,
)

POS, NEU, NEG = 0, 1, 2


# --- label cleaning --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "v", "expected"),
    [
        (POS, POS, POS),
        (NEU, NEU, NEU),
        (NEG, NEG, NEG),  # equal -> that label
        (NEU, POS, POS),
        (POS, NEU, POS),
        (NEU, NEG, NEG),
        (NEG, NEU, NEG),  # neutral + polar -> polar
        (POS, NEG, None),
        (NEG, POS, None),  # contradiction -> dropped
    ],
)
def test_combine(t, v, expected):
    assert combine(t, v) == expected


@pytest.mark.parametrize(
    ("votes", "expected"),
    [([POS, POS, NEU], POS), ([NEG, NEU, NEG], NEG), ([NEU, NEU, NEU], NEU), ([POS, NEU, NEG], None)],
)
def test_majority_of_three(votes, expected):
    assert majority(votes) == expected


# --- text decoding and image checks ------------------------------------------------------------------------------


def test_decode_text_utf8_untouched():
    assert decode_text("héllo ✓".encode()) == ("héllo ✓", 0)


def test_decode_text_fallback_counts_each_bad_byte():
    # 0xE9 -> cp1252 'é'; 0x81 is undefined in cp1252 -> U+FFFD; the UTF-8 check mark stays.
    assert decode_text(NON_UTF8_TEXT) == ("caf\u00e9 \ufffd ok \u2713\n", 2)


def test_decode_text_without_fallback_uses_replacement_chars():
    assert decode_text(b"a\xe9b\x92", fallback=None) == ("a\ufffdb\ufffd", 2)


def test_decode_text_truncated_sequence_counts_its_bytes():
    # 0xE2 0x80 starts a 3-byte sequence that never ends: two bytes, two replacements (cp1252: 'â', '€').
    assert decode_text(b"x\xe2\x80y") == ("x\u00e2\u20acy", 2)


def test_decode_text_strips_bom():
    assert decode_text(b"\xef\xbb\xbfhi") == ("hi", 0)


def test_check_image():
    assert check_image(jpeg(1)) is None
    assert check_image(b"") == "empty file"
    assert check_image(b"not an image") is not None
    truncated = jpeg(3, (64, 64))[:200]
    assert check_image(truncated, "decode") is not None
    assert check_image(b"not an image", "none") is None


# --- MVSA-Single -------------------------------------------------------------------------------------------------


def test_mvsa_single_labels_and_texts(tmp_path):
    result = read_mvsa_single(make_mvsa_single(tmp_path / "MVSA_Single"))
    table = result.table
    assert table.schema.equals(POSTS_SCHEMA, check_metadata=False)
    rows = {r["post_id"]: r for r in table.to_pylist()}
    assert list(rows) == ["1", "2", "4", "5", "6", "7", "10"]  # label-file order, dropped posts absent
    for post_id, (label, t_label, v_label, text) in MVSA_SINGLE_EXPECTED.items():
        row = rows[post_id]
        assert (row["label"], row["t_label"], row["v_label"], row["text"]) == (label, t_label, v_label, text), post_id
        assert (row["image"] is not None) == MVSA_SINGLE_HAS_IMAGE[post_id], post_id
    assert rows["1"]["image"] == jpeg(1)  # the file's bytes, not re-encoded
    assert json.loads(table.schema.metadata[b"ctmwa.labels"]) == ["positive", "neutral", "negative"]
    assert table.schema.metadata[b"ctmwa.unimodal_labels"] == b"true"


def test_mvsa_single_report_counts(tmp_path):
    report = read_mvsa_single(make_mvsa_single(tmp_path / "MVSA_Single")).report
    assert report.read == 10
    assert report.kept == 7
    assert report.dropped == {"contradiction": 2, "no_content": 1}
    assert report.read == report.kept + report.dropped_total
    assert report.missing_texts == 1  # post 7
    assert report.empty_texts == 1  # post 10
    assert report.missing_images == 1  # post 5
    assert report.unreadable_images == 1  # post 6
    assert report.replaced_chars == 2  # post 4: 0xE9 and 0x81
    assert report.texts_with_replacements == 1
    assert report.unlabelled_files == 1  # data/99.*
    assert report.per_class == {"positive": 3, "neutral": 2, "negative": 2}
    assert report.examples["contradiction"] == ["3", "9"]
    assert report.examples["no_content"] == ["8"]
    assert report.examples["unreadable_images"] == ["6"]
    assert report.to_dict()["dropped_total"] == 3


def test_mvsa_single_small_batches_same_result(tmp_path):
    root = make_mvsa_single(tmp_path / "MVSA_Single")
    a = read_mvsa_single(root)
    b = read_mvsa_single(root, ReadOptions(batch_rows=2, workers=1))
    assert a.table.equals(b.table)
    assert a.report == b.report


def test_mvsa_single_header_optional(tmp_path):
    root = make_mvsa_single(tmp_path / "MVSA_Single")
    label_file = root / "labelResultAll.txt"
    label_file.write_text("\n".join(label_file.read_text().splitlines()[1:]) + "\n")  # no header line
    assert read_mvsa_single(root).report.read == 10


# --- MVSA-Multiple -----------------------------------------------------------------------------------------------


def test_mvsa_multiple_majority_then_combine(tmp_path):
    result = read_mvsa_multiple(make_mvsa_multiple(tmp_path / "MVSA"))
    rows = {r["post_id"]: (r["label"], r["t_label"], r["v_label"]) for r in result.table.to_pylist()}
    assert rows == MVSA_MULTIPLE_EXPECTED
    report = result.report
    assert (report.read, report.kept) == (6, 3)
    assert report.dropped == {"no_majority": 2, "contradiction": 1}
    assert report.examples["no_majority"] == ["102", "105"]
    assert report.missing_images == 1
    assert report.per_class == {"positive": 2, "neutral": 0, "negative": 1}


def test_mvsa_multiple_rejects_single_layout(tmp_path):
    root = make_mvsa_single(tmp_path / "MVSA_Single")
    with pytest.raises(DatasetError, match=r"labelResultAll\.txt:2: expected an ID and 3 'text,image'"):
        read_mvsa_multiple(root)


# --- TumEmo ------------------------------------------------------------------------------------------------------


def test_tumemo_ids_from_lines(tmp_path):
    result = read_tumemo(make_tumemo(tmp_path / "TumEmo"))
    rows = {r["post_id"]: r for r in result.table.to_pylist()}
    assert list(rows) == ["a17", "5", "b2", "9", "40"]
    for post_id, (label, text, has_image) in TUMEMO_EXPECTED.items():
        row = rows[post_id]
        assert (row["label"], row["text"], row["image"] is not None) == (label, text, has_image), post_id
        assert row["t_label"] is None and row["v_label"] is None
    assert rows["5"]["image"] == jpeg(5)  # data/5.jpg, though "5" is on the label file's third line
    assert result.table.schema.metadata[b"ctmwa.unimodal_labels"] == b"false"
    assert json.loads(result.table.schema.metadata[b"ctmwa.labels"]) == [
        "angry",
        "bored",
        "calm",
        "fear",
        "happy",
        "love",
        "sad",
    ]


def test_tumemo_report_counts(tmp_path):
    report = read_tumemo(make_tumemo(tmp_path / "TumEmo")).report
    assert report.unimodal_labels is False
    assert (report.read, report.kept, report.dropped) == (5, 5, {})
    assert (report.missing_texts, report.missing_images, report.unreadable_images) == (1, 1, 0)
    assert (report.replaced_chars, report.texts_with_replacements) == (1, 1)
    assert report.unlabelled_files == 1
    assert report.per_class == {"angry": 1, "bored": 0, "calm": 1, "fear": 0, "happy": 1, "love": 1, "sad": 1}


def test_tumemo_first_line_that_is_a_post_is_kept(tmp_path):
    root = make_tumemo(tmp_path / "TumEmo")
    label_file = root / "all_data_id_and_label.txt"
    label_file.write_text("\n".join(label_file.read_text().splitlines()[1:]) + "\n")  # header gone
    assert read_tumemo(root).report.read == 5


# --- bad input: errors that name the file and line ---------------------------------------------------------------


def test_missing_label_file(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(DatasetError, match=r"labelResultAll\.txt not found; --root must be the mvsa-single folder"):
        read_mvsa_single(tmp_path)
    with pytest.raises(DatasetError, match=r"all_data_id_and_label\.txt not found"):
        read_tumemo(tmp_path)


def test_missing_data_folder(tmp_path):
    (tmp_path / "labelResultAll.txt").write_text("ID\ttext,image\n1\tpositive,positive\n")
    with pytest.raises(DatasetError, match=r"data folder .*data does not exist"):
        read_mvsa_single(tmp_path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("12\tpositive", r"labelResultAll\.txt:3: expected a 'text,image' label pair .* got 'positive'"),
        ("12", r"labelResultAll\.txt:3: expected an ID and 1 'text,image' label pair"),
        ("12\tpositive,neutral\textra", r"labelResultAll\.txt:3: expected an ID and 1"),
        ("12\thappy,neutral", r"labelResultAll\.txt:3: unknown label 'happy'; expected one of"),
        ("1\tneutral,neutral", r"labelResultAll\.txt:3: duplicate post id '1' \(first on line 2\)"),
    ],
)
def test_mvsa_bad_label_lines(tmp_path, line, message):
    write_post(tmp_path / "data", "1", "hi", jpeg(1))
    (tmp_path / "labelResultAll.txt").write_text(f"ID\ttext,image\n1\tpositive,positive\n{line}\n")
    with pytest.raises(DatasetError, match=message):
        read_mvsa_single(tmp_path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("7 Happy extra", r"all_data_id_and_label\.txt:3: expected 'ID LABEL'"),
        ("7 Grumpy", r"all_data_id_and_label\.txt:3: unknown label 'Grumpy'"),
        ("1 Sad", r"all_data_id_and_label\.txt:3: duplicate post id '1' \(first on line 2\)"),
    ],
)
def test_tumemo_bad_label_lines(tmp_path, line, message):
    write_post(tmp_path / "data", "1", "hi", jpeg(1))
    (tmp_path / "all_data_id_and_label.txt").write_text(f"ID Label\n1 Happy\n{line}\n")
    with pytest.raises(DatasetError, match=message):
        read_tumemo(tmp_path)


def test_blank_lines_are_not_posts(tmp_path):
    write_post(tmp_path / "data", "1", "hi", jpeg(1))
    (tmp_path / "labelResultAll.txt").write_text("ID\ttext,image\n\n1\tpositive,positive\n\n")
    assert read_mvsa_single(tmp_path).report.read == 1


def test_unreadable_text_file_is_an_error(tmp_path):
    write_post(tmp_path / "data", "1", None, jpeg(1))
    (tmp_path / "data" / "1.txt").mkdir()  # a folder where the text file should be: cannot be read
    (tmp_path / "labelResultAll.txt").write_text("ID\ttext,image\n1\tpositive,positive\n")
    with pytest.raises(DatasetError, match=r"1\.txt: cannot read the text file"):
        read_mvsa_single(tmp_path)
