"""Generated posts for the demo and the tests: real JPEG images and short texts whose sentiment can be learnt.

Each post has a sentiment cue in its text and its image, in the text alone, or in the image alone:

- text: positive or negative words ("so happy , love it") or, without a cue, a plain description ("my dog at the beach")
- image: a photo-like JPEG whose colour and brightness carry the cue: warm and bright (positive), dark and blue-grey
  (negative), mid-tone greens and browns without a cue

The unimodal labels follow the cues (neutral where a modality carries none) and the post's label is MVSA's combination:
the polar one where the other is neutral. So a model that listens to the wrong modality for a post is wrong. Every
word is in the vocabulary of the tiny offline CLIP (export/tiny.py), so no token is unknown.

A lake partition also carries the bad rows a real feed has: corrupt and truncated image bytes, empty and blank texts,
a null id, posts with neither text nor image, and images in other modes (grey, palette, RGBA PNG). Labels are written
beside the posts (`labels/dt=...`), never into them: the posts look like what a scorer gets in production.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

LABELS = ("positive", "neutral", "negative")  # class order of the demo model (MVSA's)
POSITIVE, NEUTRAL, NEGATIVE = range(3)
CUES = ("both", "text", "image")  # where a post's cue is

POSITIVE_WORDS = ("good", "great", "happy", "love", "lovely", "nice", "best", "amazing", "awesome", "beautiful", "fun", "glad", "wonderful", "excellent", "perfect")
NEGATIVE_WORDS = ("bad", "sad", "angry", "hate", "awful", "terrible", "worst", "ugly", "boring", "tired", "afraid", "scared", "upset", "wrong")
POSITIVE_EMOJI = ("😀", "❤️", "👍", "!")
NEGATIVE_EMOJI = ("😢", "😡", "👎", "!")
_OWNERS = ("my", "our", "the", "this", "that", "your")
_SUBJECTS = ("cat", "dog", "photo", "picture", "coffee", "cake", "pizza", "friend", "friends", "family", "team", "song", "movie", "book", "party", "trip", "car", "train", "game", "food", "music")
_PLACES = ("at the beach", "in the city", "on the street", "at home", "at work", "at school", "by the sea", "at the party")
_TIMES = ("today", "tonight", "now", "this morning", "last night", "again", "")
# Short texts, a few sentiment words each: the tiny random CLIP of the demo pools a text into one vector, and a lone
# sentiment word among many others would barely move it.
_POLAR_FRAMES = ("{w} {w2} {desc} {w3}", "{desc} so {w} , {w2} {w3}", "{w} {desc} , {w2} {w3}", "{desc} {w} {w2} !", "really {w} {w2} {desc}")

POSTS_SCHEMA = pa.schema([pa.field("post_id", pa.string()), pa.field("text", pa.string()), pa.field("image", pa.binary()), pa.field("created_at", pa.timestamp("ms", tz="UTC"))])
LABELS_SCHEMA = pa.schema(
    [pa.field("post_id", pa.string()), pa.field("label", pa.string()), pa.field("text_label", pa.string()), pa.field("image_label", pa.string()), pa.field("cue", pa.string())]
)


@dataclass(frozen=True)
class DemoSpec:
    """How posts are drawn."""

    cue_both: float = 0.5  # share of posts with a cue in text and image
    cue_text_only: float = 0.25  # share with the cue in the text alone (the rest: in the image alone)
    missing_text: float = 0.04  # share of clean posts without a text (null)
    missing_image: float = 0.04  # share of clean posts without an image (null)
    image_size: tuple[int, int] = (72, 56)  # JPEG width, height (pixels)
    jpeg_quality: int = 85  # JPEG quality of the images
    label_mix: tuple[float, float, float] | None = None  # shares of LABELS; None = uniform (the draw the other days use)


# A drifted day for the health report to catch: many more posts without an image, and a mostly negative mix.
DRIFTED = DemoSpec(missing_image=0.6, label_mix=(0.05, 0.05, 0.9))


def _rng(*key: object) -> np.random.Generator:
    """A generator seeded from a readable key, so a partition is the same bytes on every machine."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def make_text(sentiment: int, rng: np.random.Generator) -> str:
    """A short post text; positive / negative texts carry a few sentiment words, neutral ones only describe."""
    desc = f"{rng.choice(_OWNERS)} {rng.choice(_SUBJECTS)}"
    if rng.random() < 0.5:
        desc += f" {rng.choice(_PLACES)}"
    if sentiment == NEUTRAL:
        when = str(rng.choice(_TIMES)) if rng.random() < 0.4 else ""
        return " ".join(x for x in (desc, when) if x)
    words = POSITIVE_WORDS if sentiment == POSITIVE else NEGATIVE_WORDS
    w, w2, w3 = rng.choice(words, 3, replace=False)
    text = str(rng.choice(_POLAR_FRAMES)).format(w=w, w2=w2, w3=w3, desc=desc)
    if rng.random() < 0.3:
        text += " " + str(rng.choice(POSITIVE_EMOJI if sentiment == POSITIVE else NEGATIVE_EMOJI))
    return text


def _palette(sentiment: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Base colour (RGB in [0, 1]) and brightness scale of an image with that sentiment cue."""
    if sentiment == POSITIVE:  # warm and bright: yellows, oranges, pinks
        base = np.array([1.0, rng.uniform(0.55, 0.95), rng.uniform(0.1, 0.5)])
        return base, rng.uniform(0.85, 1.0)
    if sentiment == NEGATIVE:  # dark and cold: blue-greys
        base = np.array([rng.uniform(0.15, 0.35), rng.uniform(0.2, 0.4), rng.uniform(0.45, 0.75)])
        return base, rng.uniform(0.25, 0.45)
    base = np.array([rng.uniform(0.35, 0.55), rng.uniform(0.5, 0.7), rng.uniform(0.3, 0.45)])  # greens and browns
    return base, rng.uniform(0.55, 0.7)


def make_image_array(sentiment: int, rng: np.random.Generator, size: tuple[int, int] = (72, 56)) -> np.ndarray:
    """A photo-like RGB uint8 (h, w, 3) picture: a tinted gradient, a few shapes, noise; colour carries the cue."""
    w, h = size
    base, brightness = _palette(sentiment, rng)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 0.75 + 0.25 * np.sin(3 * (np.cos(angle) * x + np.sin(angle) * y) + rng.uniform(0, 6))  # (h, w)
    img = base[None, None, :] * gradient[..., None] * brightness * 255  # (h, w, 3)
    picture = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(1, 4))):  # objects of the scene, in the same tint
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        x1, y1 = x0 + int(rng.integers(6, w // 2)), y0 + int(rng.integers(6, h // 2))
        shade = np.clip(base * brightness * rng.uniform(0.6, 1.25) * 255, 0, 255).astype(int)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=tuple(int(c) for c in shade))
    out = np.asarray(picture, dtype=np.float32) + rng.normal(0, 8, (h, w, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


def encode_image(array: np.ndarray, fmt: str = "JPEG", mode: str | None = None, quality: int = 85) -> bytes:
    """Image bytes of an RGB array, optionally converted to another Pillow mode first (L, P, RGBA...)."""
    img = Image.fromarray(array)
    if mode is not None:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def generate_posts(n: int, key: str, spec: DemoSpec = DemoSpec()) -> list[dict]:
    """n clean labelled posts (a few miss their text or image); `key` seeds them and prefixes their ids."""
    rng = _rng("posts", key, n)
    posts = []
    for i in range(n):
        label = int(rng.integers(0, 3)) if spec.label_mix is None else int(rng.choice(3, p=spec.label_mix))
        cue = CUES[int(rng.choice(3, p=[spec.cue_both, spec.cue_text_only, 1 - spec.cue_both - spec.cue_text_only]))]
        # A neutral post has no cue anywhere; "where the cue is" then only decides nothing.
        text_label = label if cue in ("both", "text") else NEUTRAL
        image_label = label if cue in ("both", "image") else NEUTRAL
        u = rng.random()
        has_text = u >= spec.missing_text
        has_image = not (spec.missing_text <= u < spec.missing_text + spec.missing_image)
        # A missing modality must not hide the only cue, or the label could not be learnt from the post.
        if not has_text and cue == "text":
            has_text = True
        if not has_image and cue == "image":
            has_image = True
        posts.append(
            {
                "post_id": f"{key}-{i:06d}",
                "text": make_text(text_label, rng) if has_text else None,
                "image": encode_image(make_image_array(image_label, rng, spec.image_size), quality=spec.jpeg_quality) if has_image else None,
                "label": label,
                "text_label": text_label,
                "image_label": image_label,
                "cue": cue,
            }
        )
    return posts


def bad_posts(key: str, rng: np.random.Generator) -> list[dict]:
    """The rows a real feed carries besides good posts; `label` is None where no label makes sense."""
    good_jpeg = encode_image(make_image_array(POSITIVE, rng))
    truncated = encode_image(make_image_array(NEGATIVE, rng))
    rows = [
        ("corrupt-image", "what a lovely day at the beach", rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(), POSITIVE),
        ("truncated-image", "so sad , worst trip", truncated[: len(truncated) // 3], NEGATIVE),
        ("empty-text", "", good_jpeg, POSITIVE),
        ("blank-text", "   \n\t ", encode_image(make_image_array(NEGATIVE, rng)), NEGATIVE),
        ("no-content", None, None, None),
        ("empty-both", "", b"", None),
        ("grey-image", "my cat at home", encode_image(make_image_array(NEUTRAL, rng), mode="L"), NEUTRAL),
        ("palette-png", "great party , love it 😀", encode_image(make_image_array(POSITIVE, rng), fmt="PNG", mode="P"), POSITIVE),
        ("rgba-png", "the train again", encode_image(make_image_array(NEUTRAL, rng), fmt="PNG", mode="RGBA"), NEUTRAL),
    ]
    out = [
        {"post_id": f"{key}-bad-{name}", "text": text, "image": image, "label": label, "text_label": None, "image_label": None, "cue": "bad"}
        for name, text, image, label in rows
    ]
    # A null id: the scorer keeps the row (every input row gets one output row) with status "error".
    out.append({"post_id": None, "text": "good coffee this morning", "image": encode_image(make_image_array(POSITIVE, rng)), "label": None, "text_label": None, "image_label": None, "cue": "bad"})
    return out


def _name(label: int | None) -> str | None:
    return None if label is None else LABELS[label]


def write_partition(
    lake_root: str | Path,
    date: str,
    rows: int = 300,
    *,
    bad_rows: bool = True,
    row_group_size: int = 100,
    spec: DemoSpec = DemoSpec(),
) -> dict:
    """Write one day of posts to {lake_root}/posts/dt={date}/part-00000.parquet and its labels to
    {lake_root}/labels/dt={date}/labels.parquet; same date, same bytes. Returns the paths and counts."""
    dt.date.fromisoformat(date)  # a bad date fails here, not as a strange folder name
    lake_root = Path(lake_root)
    posts = generate_posts(rows, date, spec)
    if bad_rows:
        rng = _rng("bad", date)
        bad = bad_posts(date, rng)
        # Spread the bad rows through the partition, as a feed would.
        for k, row in enumerate(bad):
            posts.insert(int(rng.integers(0, len(posts) + 1)) if k else 0, row)
    day = dt.datetime.fromisoformat(date).replace(tzinfo=dt.timezone.utc)
    rng = _rng("times", date)
    seconds = np.sort(rng.integers(0, 86_400, len(posts)))
    posts_table = pa.table(
        {
            "post_id": [p["post_id"] for p in posts],
            "text": [p["text"] for p in posts],
            "image": [p["image"] for p in posts],
            "created_at": [day + dt.timedelta(seconds=int(s)) for s in seconds],
        },
        schema=POSTS_SCHEMA,
    )
    labels_table = pa.table(
        {
            "post_id": [p["post_id"] for p in posts],
            "label": [_name(p["label"]) for p in posts],
            "text_label": [_name(p["text_label"]) for p in posts],
            "image_label": [_name(p["image_label"]) for p in posts],
            "cue": [p["cue"] for p in posts],
        },
        schema=LABELS_SCHEMA,
    )
    posts_path = _write(posts_table, lake_root / "posts" / f"dt={date}" / "part-00000.parquet", row_group_size)
    labels_path = _write(labels_table, lake_root / "labels" / f"dt={date}" / "labels.parquet", None)
    bad_count = sum(p["cue"] == "bad" for p in posts)
    logger.info("wrote %d posts (%d bad rows) for %s to %s", len(posts), bad_count, date, posts_path.parent)
    return {"date": date, "posts": str(posts_path.parent), "labels": str(labels_path), "rows": len(posts), "bad_rows": bad_count}


def write_lake(lake_root: str | Path, dates: list[str], rows: int = 300, *, row_group_size: int = 100, spec: DemoSpec = DemoSpec()) -> list[dict]:
    """Write several days (write_partition each)."""
    return [write_partition(lake_root, d, rows, row_group_size=row_group_size, spec=spec) for d in dates]


def write_training_posts(path: str | Path, n: int = 1500, *, key: str = "train", split: tuple[float, float, float] = (0.8, 0.1, 0.1), query_fraction: float = 0.1, spec: DemoSpec = DemoSpec()) -> Path:
    """Labelled posts for training: post_id, text, image, split, label, t_label, v_label, query (class indices in
    LABELS order). `ctmwa-batch embed` turns them into a features Parquet (the label columns pass through)."""
    posts = generate_posts(n, key, spec)
    rng = _rng("split", key, n)
    order = rng.permutation(n)
    n_train, n_valid = int(round(n * split[0])), int(round(n * split[1]))
    splits = np.empty(n, dtype=object)
    splits[order[:n_train]] = "train"
    splits[order[n_train : n_train + n_valid]] = "valid"
    splits[order[n_train + n_valid :]] = "test"
    query = np.zeros(n, dtype=bool)
    query[order[: max(1, int(round(n_train * query_fraction)))]] = True
    table = pa.table(
        {
            "post_id": [p["post_id"] for p in posts],
            "text": [p["text"] for p in posts],
            "image": [p["image"] for p in posts],
            "split": splits.tolist(),
            "label": pa.array([p["label"] for p in posts], pa.int64()),
            "t_label": pa.array([p["text_label"] for p in posts], pa.int64()),
            "v_label": pa.array([p["image_label"] for p in posts], pa.int64()),
            "query": pa.array(query),
        }
    )
    out = _write(table, Path(path), None)
    logger.info("wrote %d labelled training posts to %s", n, out)
    return out


def _write(table: pa.Table, path: Path, row_group_size: int | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------------- evaluation


def evaluate(lake_root: str | Path, output_root: str | Path, model_version: str, dates: list[str]) -> list[dict]:
    """Accuracy of committed scores against the generated labels, per day and over all days, overall and by where the
    cue was (text and image / text only / image only). Rows without a label (bad rows) or a score do not count."""
    import pyarrow.dataset as ds

    from ctmwa_batch.partitions import output_dir

    per_day = []
    for date in dates:
        labels = {r["post_id"]: r for r in pq.read_table(Path(lake_root) / "labels" / f"dt={date}" / "labels.parquet").to_pylist() if r["post_id"]}
        scores = ds.dataset(output_dir(str(output_root), model_version, f"dt={date}"), format="parquet").to_table(columns=["post_id", "sentiment"]).to_pylist()
        counts: dict[str, list[int]] = {}
        for row in scores:
            truth = labels.get(row["post_id"])
            if truth is None or truth["label"] is None or row["sentiment"] is None:
                continue
            for group in ("all", truth["cue"]):
                hit_total = counts.setdefault(group, [0, 0])
                hit_total[0] += row["sentiment"] == truth["label"]
                hit_total[1] += 1
        per_day.append({"date": date, "counts": counts})
    total: dict[str, list[int]] = {}
    for day in per_day:
        for group, (hits, n) in day["counts"].items():
            t = total.setdefault(group, [0, 0])
            t[0] += hits
            t[1] += n
    return [*per_day, {"date": "all days", "counts": total}]


def format_accuracy(rows: list[dict]) -> str:
    """evaluate()'s result as a small table (accuracy and the number of rows it is over)."""
    groups = [("all", "all posts"), ("both", "cue in text+image"), ("text", "cue in text only"), ("image", "cue in image only"), ("bad", "bad rows with a label")]
    head = ["date", *[name for _, name in groups]]
    lines = [head]
    for row in rows:
        cells = [row["date"]]
        for key, _ in groups:
            hits, n = row["counts"].get(key, (0, 0))
            cells.append(f"{hits / n:.3f} ({n})" if n else "-")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in [lines[0], ["-" * w for w in widths], *lines[1:]])
