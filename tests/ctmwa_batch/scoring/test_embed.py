"""`ctmwa-batch embed`: one output row per post, embeddings equal to transformers' on the same post, bad inputs."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ctmwa_batch.cli.main import main as cli_main
from ctmwa_batch.errors import InputSchemaError, ProviderUnavailable
from ctmwa_batch.scoring.embed import embed_posts, embedding_array
from tests import images

TEXTS = ["I love this cat", "terrible day, so sad", "A PHOTO of the beach!", "good morning 😀", "new car"]


def _posts(path, n=5, **columns):
    table = pa.table(
        columns
        or {
            "post_id": [f"p{i}" for i in range(n)],
            "text": [TEXTS[i % len(TEXTS)] for i in range(n)],
            "image": [images.jpeg(60, 48, seed=i) for i in range(n)],
            "label": list(range(n)),
        }
    )
    pq.write_table(table, path)
    return path


def test_embeddings_equal_transformers_on_the_same_posts(encoder_bundle, tiny_clip_dir, tmp_path):
    """One path, no skew: embed == CLIPModel features on CLIPImageProcessorPil / tokenizer inputs."""
    import torch
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

    posts = _posts(tmp_path / "posts.parquet", n=5)
    stats = embed_posts(encoder_bundle, posts, tmp_path / "features.parquet", batch_size=2, device="cpu")
    assert stats["rows"] == 5 and stats["has_text"] == 5 and stats["has_image"] == 5
    out = pq.read_table(tmp_path / "features.parquet")
    assert out.column("post_id").to_pylist() == [f"p{i}" for i in range(5)]

    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    processor = CLIPImageProcessorPil.from_pretrained(tiny_clip_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_clip_dir)
    source = pq.read_table(posts)
    pil = [Image.open(io.BytesIO(b)) for b in source.column("image").to_pylist()]
    with torch.no_grad():
        img = model.get_image_features(**processor(images=pil, return_tensors="pt")).pooler_output
        tok = tokenizer(source.column("text").to_pylist(), padding=True, truncation=True, return_tensors="pt")
        txt = model.get_text_features(**tok).pooler_output
    want_image = torch.nn.functional.normalize(img, dim=-1).numpy()
    want_text = torch.nn.functional.normalize(txt, dim=-1).numpy()
    got_image = np.array(out.column("image_emb").to_pylist(), dtype=np.float32)
    got_text = np.array(out.column("text_emb").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got_image, want_image, atol=1e-5)
    np.testing.assert_allclose(got_text, want_text, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got_image, axis=1), 1.0, atol=1e-5)


def test_every_bad_input_still_yields_its_row(encoder_bundle, tmp_path):
    tagged, _ = images.exif_rotated_jpeg()
    cases = [
        ("good", "good morning", images.jpeg()),
        ("truncated", "ok", images.truncated_jpeg()),
        ("random", "ok", images.random_bytes()),
        ("1x1", "ok", images.one_pixel()),
        ("bomb", "ok", images.declared_size_png(100_000, 100_000)),
        ("cmyk", "ok", images.cmyk_jpeg()),
        ("gray16", "ok", images.gray16_png()),
        ("palette", "ok", images.palette_transparent_png()),
        ("gif", "ok", images.animated_gif()),
        ("exif", "ok", tagged),
        ("empty-text", "", images.jpeg()),
        ("blank-text", "  \t\n ", images.jpeg()),
        ("long-text", " ".join(["happy"] * 10_000), None),
        ("emoji", "😀😢😡❤️", b""),
        ("all-null", None, None),
        (None, None, None),
    ]
    posts = _posts(
        tmp_path / "posts.parquet",
        post_id=pa.array([c[0] for c in cases], pa.string()),
        text=pa.array([c[1] for c in cases], pa.string()),
        image=pa.array([c[2] for c in cases], pa.binary()),
        label=pa.array([1] * (len(cases) - 1) + [None], pa.int64()),
    )
    stats = embed_posts(encoder_bundle, posts, tmp_path / "f.parquet", batch_size=4, device="cpu")
    out = pq.read_table(tmp_path / "f.parquet").to_pylist()
    assert len(out) == len(cases) == stats["rows"]
    rows = {r["post_id"]: r for r in out}
    bad_images = {"truncated", "random", "bomb"}
    for post_id, _text, _ in cases:
        row = rows[post_id]
        want_image = post_id not in bad_images | {"long-text", "emoji", "all-null", None}
        want_text = post_id not in {"empty-text", "blank-text", "all-null", None}
        assert row["has_image"] is want_image, post_id
        assert row["has_text"] is want_text, post_id
        assert (row["image_emb"] is not None) == want_image and (row["text_emb"] is not None) == want_text
        if want_image:
            assert len(row["image_emb"]) == 16 and abs(np.linalg.norm(row["image_emb"]) - 1) < 1e-4
        assert (row["image_error"] is not None) == (post_id in bad_images), (post_id, row["image_error"])
    assert rows["truncated"]["image_error"].startswith("truncated image")
    assert rows["random"]["image_error"] == "not an image"
    assert rows["bomb"]["image_error"].startswith("decompression bomb")
    assert rows[None]["label"] is None  # nulls pass through
    assert stats["no_content"] == 2 and stats["image_errors"] == 3


def test_streams_in_batches_and_passes_columns_through(encoder_bundle, tmp_path):
    n = 23
    posts = _posts(tmp_path / "posts.parquet", n=n)
    out_path = tmp_path / "out" / "features.parquet"
    embed_posts(encoder_bundle, posts, out_path, batch_size=5, device="cpu")
    f = pq.ParquetFile(out_path)
    assert f.metadata.num_rows == n and f.metadata.num_row_groups == 5  # one row group per record batch
    table = f.read()
    assert table.column_names == [
        "post_id",
        "text",
        "label",
        "text_emb",
        "image_emb",
        "has_text",
        "has_image",
        "image_error",
    ]
    assert table.column("label").to_pylist() == list(range(n))
    assert table.schema.field("text_emb").type == pa.list_(pa.float32())
    assert b"model_version" in table.schema.metadata[b"ctmwa_batch.scoring.embed"]
    assert sorted(p.name for p in out_path.parent.iterdir()) == ["features.parquet"]  # no temporary left
    kept = embed_posts(
        encoder_bundle, posts, tmp_path / "k.parquet", batch_size=50, keep_image_column=True, device="cpu"
    )
    assert kept["rows"] == n and "image" in pq.read_schema(tmp_path / "k.parquet").names


def test_folder_input_hive_partitions_and_image_paths(encoder_bundle, tmp_path):
    folder = tmp_path / "posts"
    (folder / "dt=2026-01-01").mkdir(parents=True)
    (folder / "dt=2026-01-02").mkdir()
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    (img_dir / "a.jpg").write_bytes(images.jpeg())
    paths = [str(img_dir / "a.jpg"), str(img_dir / "missing.jpg"), None]
    pq.write_table(
        pa.table({"post_id": ["a", "b", "c"], "text": ["good", None, "bad"], "image": paths}),
        folder / "dt=2026-01-01" / "part-0.parquet",
    )
    pq.write_table(
        pa.table({"post_id": ["d"], "text": ["nice"], "image": [str(img_dir / "a.jpg")]}),
        folder / "dt=2026-01-02" / "part-0.parquet",
    )
    (folder / "_SUCCESS.json").write_text("{}")
    embed_posts(encoder_bundle, folder, tmp_path / "f.parquet", device="cpu", image_roots=(str(img_dir),))
    rows = {r["post_id"]: r for r in pq.read_table(tmp_path / "f.parquet").to_pylist()}
    assert set(rows) == {"a", "b", "c", "d"}
    assert rows["a"]["has_image"] and rows["d"]["has_image"] and rows["d"]["dt"] is not None
    assert not rows["b"]["has_image"] and rows["b"]["image_error"] == f"image not found: {img_dir / 'missing.jpg'}"
    assert not rows["c"]["has_image"] and rows["c"]["image_error"] is None


def test_process_pool_decoding_gives_the_same_output(encoder_bundle, tmp_path):
    posts = _posts(tmp_path / "posts.parquet", n=12)
    embed_posts(encoder_bundle, posts, tmp_path / "a.parquet", batch_size=5, workers=0, device="cpu")
    embed_posts(encoder_bundle, posts, tmp_path / "b.parquet", batch_size=5, workers=2, device="cpu")
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))


@pytest.mark.parametrize(
    ("kwargs", "table", "match"),
    [
        ({"image_column": "img"}, None, r"column 'img' not in .*set --image-column"),
        ({"id_column": "id"}, None, r"column 'id' not in .*set --id-column"),
        ({"text_column": "label"}, None, r"text column 'label' .* type int64, expected string; set --text-column"),
        (
            {},
            {"post_id": ["a"], "text": ["t"], "image": [1.5]},
            r"image column 'image' .* type double.*set --image-column",
        ),
    ],
)
def test_schema_errors_come_before_any_output(encoder_bundle, tmp_path, kwargs, table, match):
    posts = _posts(tmp_path / "posts.parquet", **(table or {}))
    with pytest.raises(InputSchemaError, match=match):
        embed_posts(encoder_bundle, posts, tmp_path / "out" / "f.parquet", **kwargs)
    assert not (tmp_path / "out").exists()


def test_missing_input(encoder_bundle, tmp_path):
    with pytest.raises(InputSchemaError, match="does not exist"):
        embed_posts(encoder_bundle, tmp_path / "nope.parquet", tmp_path / "f.parquet")


def test_cuda_on_this_machine_is_an_error_not_a_fallback(encoder_bundle, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(ProviderUnavailable):
        embed_posts(encoder_bundle, _posts(tmp_path / "p.parquet"), tmp_path / "f.parquet", device="cuda")
    assert not (tmp_path / "f.parquet").exists()


def test_cli(encoder_bundle, tmp_path, capsys):
    posts = _posts(tmp_path / "posts.parquet", n=3)
    code = cli_main(
        [
            "embed",
            "--bundle",
            str(encoder_bundle),
            "--input",
            str(posts),
            "--output",
            str(tmp_path / "f.parquet"),
            "--device",
            "cpu",
            "--batch-size",
            "2",
        ]
    )
    assert code == 0
    assert '"rows": 3' in capsys.readouterr().out
    assert (
        cli_main(
            [
                "embed",
                "--bundle",
                str(encoder_bundle),
                "--input",
                str(posts),
                "--output",
                str(tmp_path / "g.parquet"),
                "--text-column",
                "body",
            ]
        )
        == 2
    )
    assert "set --text-column" in capsys.readouterr().err


def test_embedding_array_nulls():
    emb = np.arange(6, dtype=np.float32).reshape(3, 2)
    arr = embedding_array(emb, np.array([True, False, True]))
    assert arr.to_pylist() == [[0.0, 1.0], None, [4.0, 5.0]]
    assert arr.type == pa.list_(pa.float32())


def test_empty_input_writes_an_empty_features_file(encoder_bundle, tmp_path):
    empty = pa.table(
        {"post_id": pa.array([], pa.string()), "text": pa.array([], pa.string()), "image": pa.array([], pa.binary())}
    )
    pq.write_table(empty, tmp_path / "posts.parquet")
    stats = embed_posts(encoder_bundle, tmp_path / "posts.parquet", tmp_path / "f.parquet", device="cpu")
    assert stats["rows"] == 0
    assert pq.read_table(tmp_path / "f.parquet").column_names[-5:] == [
        "text_emb",
        "image_emb",
        "has_text",
        "has_image",
        "image_error",
    ]


def test_text_only_posts_without_id(encoder_bundle, tmp_path):
    pq.write_table(pa.table({"body": ["good day", None]}), tmp_path / "posts.parquet")
    stats = embed_posts(
        encoder_bundle,
        tmp_path / "posts.parquet",
        tmp_path / "f.parquet",
        id_column=None,
        text_column="body",
        image_column=None,
        device="cpu",
    )
    assert stats["has_text"] == 1 and stats["has_image"] == 0
    rows = pq.read_table(tmp_path / "f.parquet").to_pylist()
    assert [r["has_text"] for r in rows] == [True, False] and all(r["image_emb"] is None for r in rows)
