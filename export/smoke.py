"""The validation sample of a release: a small posts partition that `release.validate` scores with a new bundle.

It ships with the product (a deployed Airflow has no test fixtures): `rows` plain posts (short texts, small JPEGs of
colour gradients) and the bad rows a real feed carries (corrupt and truncated images, empty and blank texts, posts
with no content, a null id, images in other modes). Every row must come back from scoring once, the bad ones with a
status; the demo's and the tests' generated posts are in fixtures/posts.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ctmwa_batch import schema

TEXTS = (
    "what a lovely day at the beach",
    "so sad , worst trip",
    "my cat at home",
    "great party , love it",
    "the train again",
)
PART_FILE = "part-00000.parquet"


def _image(seed: int, fmt: str = "JPEG", mode: str = "RGB", size: tuple[int, int] = (48, 40)) -> bytes:
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 255) // (w - 1), (y * 255) // (h - 1), np.full((h, w), (seed * 53) % 256)], -1).astype(
        np.uint8
    )
    buf = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def bad_rows() -> list[tuple[str | None, str | None, bytes | None]]:
    """(post_id, text, image) of the rows a feed carries besides good posts: 10 rows, 2 of them with no content."""
    truncated = _image(1, size=(160, 120))
    return [
        ("bad-corrupt-image", TEXTS[0], np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()),
        ("bad-truncated-image", TEXTS[1], truncated[: len(truncated) // 3]),
        ("bad-empty-text", "", _image(2)),
        ("bad-blank-text", "   \n\t ", _image(3)),
        ("bad-no-content", None, None),
        ("bad-empty-both", "", b""),
        ("bad-grey-image", TEXTS[2], _image(4, mode="L")),
        ("bad-palette-png", TEXTS[3], _image(5, fmt="PNG", mode="P")),
        ("bad-rgba-png", TEXTS[4], _image(6, fmt="PNG", mode="RGBA")),
        (None, "good coffee this morning", _image(7)),  # a null id: scored with status "error", never dropped
    ]


def write_sample(folder: str | Path, rows: int = 40) -> dict:
    """Write `rows` plain posts plus the bad rows to folder/part-00000.parquet; returns the folder and the row count."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    posts = [(f"smoke-{i:05d}", TEXTS[i % len(TEXTS)], _image(i)) for i in range(rows)] + bad_rows()
    ids, texts, images = (list(column) for column in zip(*posts, strict=True))
    table = pa.table(
        dict(zip(schema.POSTS_SCHEMA.names, (ids, texts, images), strict=True)), schema=schema.POSTS_SCHEMA
    )
    pq.write_table(table, folder / PART_FILE, row_group_size=max(1, len(posts) // 2))
    return {"posts": str(folder), "rows": len(posts)}
