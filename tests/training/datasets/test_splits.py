"""Seeded 8:1:1 splits, split files and the query set."""

from __future__ import annotations

from collections import Counter

import pytest

from ctmwa_batch.errors import DatasetError
from ctmwa_training.datasets import SplitConfig, assign, read_split_file
from ctmwa_training.datasets.splits import allocate, choose_query, seeded_splits

NAMES = ["positive", "neutral", "negative"]


def _posts(per_class):
    ids, labels = [], []
    for label, count in enumerate(per_class):
        for _ in range(count):
            ids.append(f"p{len(ids):04d}")
            labels.append(label)
    return ids, labels


def test_allocate_by_hand():
    # Quotas (i+1)*r - count*10 for r = 8, 1, 1: position 3 is the first where valid (and test) lead train; ties
    # go to the earlier part, so valid comes first.
    assert allocate(5, (8, 1, 1)) == [0, 0, 0, 1, 0]
    assert Counter(allocate(10, (8, 1, 1))) == {0: 8, 1: 1, 2: 1}
    assert Counter(allocate(100, (8, 1, 1))) == {0: 80, 1: 10, 2: 10}
    assert Counter(allocate(7, (1, 1, 0))) == {0: 4, 1: 3}


def test_stratified_8_1_1_per_class():
    ids, labels = _posts((40, 40, 20))
    split = seeded_splits(ids, labels, SplitConfig(seed=3))
    per = Counter(zip(split, labels, strict=True))
    # Each class's block ends on a whole multiple of 10 posts, so each class splits exactly 8:1:1.
    assert per == {
        ("train", 0): 32,
        ("valid", 0): 4,
        ("test", 0): 4,
        ("train", 1): 32,
        ("valid", 1): 4,
        ("test", 1): 4,
        ("train", 2): 16,
        ("valid", 2): 2,
        ("test", 2): 2,
    }


def test_plain_8_1_1_counts():
    ids, labels = _posts((70, 20, 10))
    split = seeded_splits(ids, labels, SplitConfig(seed=3, stratify=False))
    assert Counter(split) == {"train": 80, "valid": 10, "test": 10}


def test_splits_deterministic_per_seed_and_independent_of_input_order():
    ids, labels = _posts((30, 20, 10))
    a = seeded_splits(ids, labels, SplitConfig(seed=7))
    assert seeded_splits(ids, labels, SplitConfig(seed=7)) == a
    assert seeded_splits(ids, labels, SplitConfig(seed=8)) != a
    reversed_split = seeded_splits(ids[::-1], labels[::-1], SplitConfig(seed=7))
    assert dict(zip(ids[::-1], reversed_split, strict=True)) == dict(zip(ids, a, strict=True))


def test_query_fraction_of_train_among_eligible():
    ids, labels = _posts((40, 40, 20))
    ok = [i % 5 != 0 for i in range(100)]  # one post in five lacks a unimodal label or a modality
    result = assign(ids, labels, ok, NAMES, SplitConfig(seed=11, query_fraction=0.1))
    assert result.report.per_split == {"train": 80, "valid": 10, "test": 10}
    assert sum(result.query) == 8 == result.report.query == result.report.query_target  # round(0.1 * 80)
    for i, q in enumerate(result.query):
        if q:
            assert result.split[i] == "train" and ok[i]
    assert result.report.query_eligible == sum(ok[i] for i in range(100) if result.split[i] == "train")
    # Stratified draw: 8 query posts over classes of 32/32/16 training posts -> about 3/3/2.
    assert sorted(Counter(labels[i] for i in range(100) if result.query[i]).values()) == [2, 3, 3]
    again = assign(ids, labels, ok, NAMES, SplitConfig(seed=11, query_fraction=0.1))
    assert again.query == result.query


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, 0), (0.25, 20), (1.0, 80)])
def test_query_fraction_respected(fraction, expected):
    ids, labels = _posts((40, 40, 20))
    result = assign(ids, labels, [True] * 100, NAMES, SplitConfig(query_fraction=fraction))
    assert sum(result.query) == expected


def test_query_capped_by_eligible_posts():
    picked, target = choose_query([3, 5], [0] * 10, n_train=50, fraction=0.1, seed=1)
    assert (sorted(picked), target) == ([3, 5], 5)


def test_split_file(tmp_path):
    path = tmp_path / "split.tsv"
    path.write_text("id\tsplit\na\ttrain\nb\tval\nc\ttest\nd\tdev\nzz\ttrain\n")
    assert read_split_file(path) == {"a": "train", "b": "valid", "c": "test", "d": "valid", "zz": "train"}
    result = assign(
        ["a", "b", "c", "d", "e"],
        [0, 1, 2, 0, 1],
        [True] * 5,
        NAMES,
        SplitConfig(split_file=str(path), query_fraction=1.0),
    )
    assert result.split == ["train", "valid", "test", "valid", None]  # "e" is not listed: left out
    assert result.query == [True, False, False, False, False]
    assert (result.report.not_in_split_file, result.report.unknown_in_split_file) == (1, 1)  # e; zz
    assert result.report.per_split == {"train": 1, "valid": 2, "test": 1}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("id,split\na,train\nb,holdout\n", r"split\.csv:3: unknown split 'holdout' for id 'b'"),
        ("id,split\na,train\na,test\n", r"split\.csv:3: duplicate id 'a' \(first on line 2\)"),
        ("id,split\na,train,x\n", r"split\.csv:2: expected 'id,split'"),
        ("id,split\n", r"lists no posts"),
    ],
)
def test_split_file_errors(tmp_path, body, message):
    path = tmp_path / "split.csv"
    path.write_text(body)
    with pytest.raises(DatasetError, match=message):
        read_split_file(path)


def test_split_config_validation():
    with pytest.raises(ValueError, match="query_fraction"):
        SplitConfig(query_fraction=1.5)
    with pytest.raises(ValueError, match="ratios"):
        SplitConfig(ratios=(0, 1, 1))
