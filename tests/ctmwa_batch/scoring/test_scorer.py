"""Scorer on record batches: every kind of bad row keeps its row, with the right status and reason."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from ctmwa_batch import schema
from ctmwa_batch.model.bundle import load_bundle
from ctmwa_batch.scoring.scorer import ScoreConfig, Scorer
from tests import images

FIXED_TIME = "2026-11-26T03:00:00+00:00"

OK, TM, IM, NC, ERR = (
    schema.STATUS_OK,
    schema.STATUS_TEXT_MISSING,
    schema.STATUS_IMAGE_MISSING,
    schema.STATUS_NO_CONTENT,
    schema.STATUS_ERROR,
)


def bad_rows() -> list[tuple[str | None, str | None, bytes | None, str, str | None]]:
    """(id, text, image, expected status, expected error prefix) for every kind of bad post."""
    good = images.jpeg(60, 48, seed=1)
    return [
        ("good", "I love this cat", good, OK, None),
        ("truncated", "ok", images.truncated_jpeg(), IM, "image: truncated image"),
        ("random", "ok", images.random_bytes(), IM, "image: not an image"),
        ("1x1", "ok", images.one_pixel(), OK, None),
        ("bomb", "ok", images.declared_size_png(100_000, 100_000), IM, "image: decompression bomb"),
        ("cmyk", "sad day", images.cmyk_jpeg(), OK, None),
        ("gray16", "ok", images.gray16_png(), OK, None),
        ("palette", "ok", images.palette_transparent_png(), OK, None),
        ("gif", "ok", images.animated_gif(), OK, None),
        ("empty-text", "", good, TM, None),
        ("blank-text", "  \t\n ", good, TM, None),
        ("long-text", " ".join(["happy"] * 10_000), None, IM, None),
        ("emoji", "😀😢😡❤️", b"", IM, None),
        ("nothing", None, None, NC, None),
        ("nothing-bad-image", "   ", images.random_bytes(seed=2), NC, "image: not an image"),
        (None, "a post without id", good, ERR, "id: null"),
        ("dup", "good morning", good, OK, None),
        ("dup", None, good, TM, None),
        ("dup", "good morning", good, OK, None),
    ]


def bad_batch() -> pa.RecordBatch:
    rows = bad_rows()
    return pa.RecordBatch.from_pydict(
        {
            "post_id": pa.array([r[0] for r in rows], pa.string()),
            "text": pa.array([r[1] for r in rows], pa.string()),
            "image": pa.array([r[2] for r in rows], pa.binary()),
        }
    )


def check_scores(out: pa.Table | pa.RecordBatch, labels: list[str], model_version: str) -> None:
    """Row-by-row expectations for the output of bad_batch() (output rows keep the input's order)."""
    rows = bad_rows()
    got = out.to_pylist()
    assert len(got) == len(rows)
    assert Counter(r["post_id"] for r in got) == Counter(r[0] for r in rows)  # every id, as many times as in the input
    for (post_id, _, _, status, error), row in zip(rows, got):
        assert (row["post_id"], row["status"]) == (post_id, status)
        if error is None:
            assert row["error"] is None, (post_id, row["error"])
        else:
            assert row["error"] is not None and row["error"].startswith(error), (post_id, row["error"])
        # the id-less row has both modalities; it is not scored because nothing could join its score back
        assert row["has_text"] == (status in (OK, IM, ERR)), post_id
        assert row["has_image"] == (status in (OK, TM, ERR)), post_id
        assert row["model_version"] == model_version
        if status in (OK, TM, IM):
            probs = np.array([row[schema.prob_column(label)] for label in labels])
            assert abs(probs.sum() - 1) < 1e-4 and (probs >= 0).all()
            assert row["sentiment"] == labels[int(probs.argmax())]
            assert row["confidence"] == pytest.approx(probs.max())
            assert 0 < row["text_weight"] < 1 and 0 < row["image_weight"] < 1
            # evidence of a modality the post lacks is null, not a number made from the translated stand-in
            assert (row["text_evidence"] is not None) == row["has_text"] and (row["image_evidence"] is not None) == row[
                "has_image"
            ]
            assert all(0 <= row[k] <= 1 for k in ("text_evidence", "image_evidence") if row[k] is not None)
            assert (row["text_sentiment"] in labels) == row["has_text"]
            assert (row["image_sentiment"] in labels) == row["has_image"]
        else:
            assert row["sentiment"] is None and row["confidence"] is None and row["text_weight"] is None
            assert row["text_evidence"] is None and row["image_evidence"] is None
            assert all(row[schema.prob_column(label)] is None for label in labels)
            assert row["text_sentiment"] is None and row["image_sentiment"] is None


@pytest.fixture(scope="module")
def scorer(full_bundle):
    return Scorer(full_bundle, ScoreConfig(device="cpu", intra_op_threads=1, scored_at=FIXED_TIME))


def test_every_bad_row_is_output_with_its_status(scorer, full_bundle):
    bundle = load_bundle(full_bundle)
    out = scorer.score(bad_batch())
    assert out.schema.equals(scorer.output_schema(pa.field("post_id", pa.string())))
    assert out.schema.names[:3] == ["post_id", "sentiment", "confidence"]
    check_scores(out, bundle.labels, bundle.model_version)
    assert set(out.column("scored_at").to_pylist()) == {dt.datetime(2026, 11, 26, 3, tzinfo=dt.UTC)}


def test_scores_do_not_depend_on_the_batch(full_bundle):
    """A row's score is its own: the same post scored alone or among others gives the same numbers (fp32 and fp16;
    int8 scales its activations per batch, README "Encoder precision")."""
    scorer = Scorer(full_bundle, ScoreConfig(device="cpu", intra_op_threads=1, scored_at=FIXED_TIME, precision="fp32"))
    batch = bad_batch()
    whole = scorer.score(batch).to_pylist()
    for i in (0, 5, 9, 11):
        alone = scorer.score(batch.slice(i, 1)).to_pylist()[0]
        for key, value in whole[i].items():
            if isinstance(value, float):
                assert alone[key] == pytest.approx(value, abs=1e-5), key
            else:
                assert alone[key] == value, key


def test_empty_batch_and_integer_ids(scorer):
    empty = scorer.score(bad_batch().slice(0, 0))
    assert empty.num_rows == 0 and "sentiment" in empty.schema.names
    ints = pa.RecordBatch.from_pydict(
        {
            "post_id": pa.array([7, None], pa.int64()),
            "text": ["nice", "nice"],
            "image": pa.array([None, None], pa.binary()),
        }
    )
    out = scorer.score(ints)
    assert out.schema.field("post_id").type == pa.int64()
    assert out.column("post_id").to_pylist() == [7, None] and out.column("status").to_pylist() == [IM, ERR]


def test_text_only_and_image_only_posts(full_bundle):
    """Posts without an image column (or text column) are scored on the other modality."""
    text_only = Scorer(full_bundle, ScoreConfig(device="cpu", image_column=None))
    out = text_only.score(pa.RecordBatch.from_pydict({"post_id": ["a", "b"], "text": ["good", None]}))
    assert out.column("status").to_pylist() == [IM, NC]
    image_only = Scorer(full_bundle, ScoreConfig(device="cpu", text_column=None, id_column="id"))
    out = image_only.score(pa.RecordBatch.from_pydict({"id": ["a"], "image": pa.array([images.jpeg()], pa.binary())}))
    assert out.column("status").to_pylist() == [TM] and out.column("sentiment").to_pylist()[0] is not None


def test_a_head_without_evidence_outputs_scores_with_null_evidence(full_bundle, tmp_path, caplog):
    """A bundle exported before text_evidence / image_evidence existed keeps scoring (same numbers elsewhere); its
    evidence columns are null, and the log says to re-export the head."""
    import shutil

    import onnx

    from ctmwa_batch.model.bundle import EVIDENCE_OUTPUTS, HEAD, add_files

    old = tmp_path / "old"
    shutil.copytree(full_bundle, old)
    graph = onnx.load(str(old / HEAD))
    kept = [o for o in graph.graph.output if o.name not in EVIDENCE_OUTPUTS]
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    onnx.save(graph, str(tmp_path / "old_head.onnx"))
    add_files(old, {HEAD: tmp_path / "old_head.onnx"}, replace=True)
    with caplog.at_level("WARNING", logger="ctmwa_batch.scoring.scorer"):
        scorer = Scorer(old, ScoreConfig(device="cpu", intra_op_threads=1, scored_at=FIXED_TIME))
    assert not scorer.has_evidence and "re-export the head" in caplog.text and "text_evidence" in caplog.text
    out = scorer.score(bad_batch())
    assert out.column("text_evidence").null_count == out.num_rows == out.column("image_evidence").null_count
    new = Scorer(full_bundle, ScoreConfig(device="cpu", intra_op_threads=1, scored_at=FIXED_TIME)).score(bad_batch())
    for name in ("sentiment", "confidence", "text_weight", "image_weight", "status"):
        assert out.column(name).to_pylist() == new.column(name).to_pylist(), name
