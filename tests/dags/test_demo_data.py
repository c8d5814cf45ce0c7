"""ctmwa_batch.demo_data: deterministic lake partitions with real images, learnable cues, and the bad rows of a feed."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from ctmwa_batch import demo_data
from ctmwa_batch.preprocess import ImageSpec, decode_images
from training.datasets.mvsa import combine


def test_partition_layout_counts_and_determinism(tmp_path):
    info = demo_data.write_partition(tmp_path / "a", "2026-01-05", rows=60, row_group_size=25)
    again = demo_data.write_partition(tmp_path / "b", "2026-01-05", rows=60, row_group_size=25)
    part = tmp_path / "a/posts/dt=2026-01-05/part-00000.parquet"
    assert info["rows"] == 60 + info["bad_rows"] and info["bad_rows"] == 10
    assert part.read_bytes() == (tmp_path / "b/posts/dt=2026-01-05/part-00000.parquet").read_bytes()
    assert again["rows"] == info["rows"]
    meta = pq.ParquetFile(part).metadata
    assert [meta.row_group(k).num_rows for k in range(meta.num_row_groups)] == [25, 25, 20]
    posts = pq.read_table(part)
    assert posts.schema.names == ["post_id", "text", "image", "created_at"]  # no labels in the posts
    labels = pq.read_table(info["labels"])
    assert labels.column("post_id").to_pylist() == posts.column("post_id").to_pylist()
    other_day = demo_data.write_partition(tmp_path / "a", "2026-01-06", rows=60)
    assert other_day["rows"] == info["rows"]
    assert pq.read_table(other_day["posts"]).column("text").to_pylist() != posts.column("text").to_pylist()


def test_bad_rows_are_there(tmp_path):
    info = demo_data.write_partition(tmp_path, "2026-01-05", rows=30)
    rows = pq.read_table(info["posts"]).to_pylist()
    ids = [r["post_id"] for r in rows]
    assert ids.count(None) == 1
    by_id = {r["post_id"]: r for r in rows if r["post_id"]}
    assert by_id["2026-01-05-bad-no-content"]["text"] is None and by_id["2026-01-05-bad-no-content"]["image"] is None
    assert by_id["2026-01-05-bad-empty-text"]["text"] == ""
    assert by_id["2026-01-05-bad-blank-text"]["text"].strip() == ""
    spec = ImageSpec(size=32, resize_shortest_edge=32)
    items = [by_id[f"2026-01-05-bad-{k}"]["image"] for k in ("corrupt-image", "truncated-image", "grey-image", "palette-png", "rgba-png")]
    _, ok, reasons = decode_images(items, spec)
    assert ok.tolist() == [False, False, True, True, True], reasons
    modes = [Image.open(io.BytesIO(b)).mode for b in items[2:]]
    assert modes == ["L", "P", "RGBA"]


def test_images_are_jpegs_whose_colour_carries_the_cue():
    rng = np.random.default_rng(0)
    brightness = {}
    for label in (demo_data.POSITIVE, demo_data.NEUTRAL, demo_data.NEGATIVE):
        arrays = [np.asarray(Image.open(io.BytesIO(demo_data.encode_image(demo_data.make_image_array(label, rng))))) for _ in range(20)]
        assert Image.open(io.BytesIO(demo_data.encode_image(demo_data.make_image_array(label, rng)))).format == "JPEG"
        brightness[label] = np.mean([a.mean() for a in arrays])
        warmth = np.mean([a[..., 0].mean() - a[..., 2].mean() for a in arrays])
        if label == demo_data.POSITIVE:
            assert warmth > 60
        if label == demo_data.NEGATIVE:
            assert warmth < 0
    assert brightness[demo_data.POSITIVE] > brightness[demo_data.NEUTRAL] > brightness[demo_data.NEGATIVE]


def test_texts_carry_sentiment_words_only_when_polar():
    rng = np.random.default_rng(1)
    polar = set(demo_data.POSITIVE_WORDS) | set(demo_data.NEGATIVE_WORDS)
    for _ in range(50):
        assert not set(demo_data.make_text(demo_data.NEUTRAL, rng).split()) & polar
        assert set(demo_data.make_text(demo_data.POSITIVE, rng).split()) & set(demo_data.POSITIVE_WORDS)
        assert set(demo_data.make_text(demo_data.NEGATIVE, rng).split()) & set(demo_data.NEGATIVE_WORDS)


def test_labels_follow_the_cues():
    posts = demo_data.generate_posts(400, "k")
    cues = Counter(p["cue"] for p in posts)
    assert 150 < cues["both"] < 250 and cues["text"] > 60 and cues["image"] > 60
    for p in posts:
        assert p["label"] == combine(p["text_label"], p["image_label"])  # MVSA's rule, as the dataset reader applies it
        if p["cue"] == "text":
            assert p["image_label"] == demo_data.NEUTRAL and p["text"] is not None
        if p["cue"] == "image":
            assert p["text_label"] == demo_data.NEUTRAL and p["image"] is not None
        assert p["text"] is not None or p["image"] is not None
    assert not any({p["text_label"], p["image_label"]} == {demo_data.POSITIVE, demo_data.NEGATIVE} for p in posts)


def test_every_word_is_in_the_tiny_clip_vocabulary():
    from export.tiny import SYMBOLS, WORDS

    vocab = set(WORDS) | set(SYMBOLS)
    rng = np.random.default_rng(2)
    texts = [demo_data.make_text(label, rng) for label in range(3) for _ in range(200)]
    texts += [p["text"] for p in demo_data.bad_posts("d", rng) if p["text"]]
    unknown = {w for t in texts for w in t.split() if w not in vocab}
    assert not unknown


def test_training_posts_have_the_features_columns(tmp_path):
    path = demo_data.write_training_posts(tmp_path / "train.parquet", n=100)
    table = pq.read_table(path)
    assert table.schema.names == ["post_id", "text", "image", "split", "label", "t_label", "v_label", "query"]
    splits = Counter(table.column("split").to_pylist())
    assert splits == {"train": 80, "valid": 10, "test": 10}
    assert sum(table.column("query").to_pylist()) == 8
    assert set(table.column("label").to_pylist()) == {0, 1, 2}
