"""Small raw datasets in each distributed layout, with real JPEG bytes, for the reader tests.

Every folder comes with the hand-computed expectations the tests check (see the comments beside each post).
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

# Not valid UTF-8: 0xE9 (cp1252 'é') and 0x81 (undefined in cp1252 -> U+FFFD); the check mark is valid UTF-8.
NON_UTF8_TEXT = b"caf\xe9 \x81 ok \xe2\x9c\x93\n"
NON_UTF8_DECODED = "caf\u00e9 \ufffd ok \u2713"


def jpeg(seed: int, size: tuple[int, int] = (24, 16)) -> bytes:
    """A small real JPEG whose colour depends on `seed`."""
    img = Image.new("RGB", size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def corrupt_jpeg() -> bytes:
    """A JPEG cut in half: the header parses, the decode fails."""
    data = jpeg(7, (64, 64))
    return data[: len(data) // 2]


def write_post(data: Path, post_id: str, text: bytes | str | None, image: bytes | None) -> None:
    """data/ID.txt and data/ID.jpg; None leaves that file out."""
    data.mkdir(parents=True, exist_ok=True)
    if text is not None:
        (data / f"{post_id}.txt").write_bytes(text.encode() if isinstance(text, str) else text)
    if image is not None:
        (data / f"{post_id}.jpg").write_bytes(image)


def make_mvsa_single(root: Path) -> Path:
    """An MVSA-Single folder; expectations in MVSA_SINGLE_EXPECTED."""
    data = root / "data"
    lines = ["ID\ttext,image"]
    posts = [
        # id, text label, image label, text file, image file  -> expected outcome
        ("1", "positive", "positive", "  Sunny day at the beach \n", jpeg(1)),  # positive
        ("2", "neutral", "negative", "Traffic again", jpeg(2)),  # negative (neutral + polar)
        ("3", "positive", "negative", "mixed", jpeg(3)),  # dropped: contradiction
        ("4", "neutral", "neutral", NON_UTF8_TEXT, jpeg(4)),  # neutral, 2 replaced chars
        ("5", "negative", "neutral", "no picture", None),  # negative, missing image
        ("6", "positive", "neutral", "broken picture", corrupt_jpeg()),  # positive, unreadable image
        ("7", "neutral", "positive", None, jpeg(7)),  # positive, missing text
        ("8", "negative", "negative", None, None),  # dropped: no content
        ("9", "negative", "positive", "mixed again", jpeg(9)),  # dropped: contradiction
        ("10", "Neutral", "NEUTRAL", " \n\t", jpeg(10)),  # neutral (case-insensitive words), empty text
    ]
    for post_id, t, v, text, image in posts:
        lines.append(f"{post_id}\t{t},{v}")
        write_post(data, post_id, text, image)
    write_post(data, "99", "no label line for me", jpeg(99))  # unlabelled
    (root / "labelResultAll.txt").write_text("\n".join(lines) + "\n")
    return root


# post_id -> (label, t_label, v_label, text) with positive=0, neutral=1, negative=2
MVSA_SINGLE_EXPECTED = {
    "1": (0, 0, 0, "Sunny day at the beach"),
    "2": (2, 1, 2, "Traffic again"),
    "4": (1, 1, 1, NON_UTF8_DECODED),
    "5": (2, 2, 1, "no picture"),
    "6": (0, 0, 1, "broken picture"),
    "7": (0, 1, 0, None),
    "10": (1, 1, 1, None),
}
MVSA_SINGLE_HAS_IMAGE = {"1": True, "2": True, "4": True, "5": False, "6": False, "7": True, "10": True}


def make_mvsa_multiple(root: Path) -> Path:
    """An MVSA-Multiple folder (three annotators' text,image pairs per line); expectations in MVSA_MULTIPLE_EXPECTED."""
    data = root / "data"
    lines = ["ID\ttext,image\ttext,image\ttext,image"]
    posts = [
        # text votes pos,pos,neu -> pos; image votes pos,neu,pos -> pos; -> positive
        ("101", ["positive,positive", "positive,neutral", "neutral,positive"], jpeg(1)),
        # text votes pos,neg,neu: no majority -> dropped
        ("102", ["positive,neutral", "negative,neutral", "neutral,neutral"], jpeg(2)),
        # text neg (2 of 3), image pos (2 of 3): contradiction -> dropped
        ("103", ["negative,positive", "negative,positive", "neutral,neutral"], jpeg(3)),
        # text neu,neu,pos -> neu; image neg,neg,neu -> neg; -> negative
        ("104", ["neutral,negative", "neutral,negative", "positive,neutral"], jpeg(4)),
        # text neu (3 of 3); image neu,pos,neg: no majority -> dropped
        ("105", ["neutral,neutral", "neutral,positive", "neutral,negative"], jpeg(5)),
        # text pos,pos,neg -> pos; image neu (3 of 3) -> positive; image file missing
        ("106", ["positive,neutral", "positive,neutral", "negative,neutral"], None),
    ]
    for post_id, pairs, image in posts:
        lines.append("\t".join([post_id, *pairs]))
        write_post(data, post_id, f"post {post_id}", image)
    (root / "labelResultAll.txt").write_text("\n".join(lines) + "\n")
    return root


MVSA_MULTIPLE_EXPECTED = {"101": (0, 0, 0), "104": (2, 1, 2), "106": (0, 0, 1)}


def make_tumemo(root: Path) -> Path:
    """A TumEmo folder; the label file's order is not the ids' order. Expectations in TUMEMO_EXPECTED."""
    data = root / "data"
    lines = ["ID Label", "a17 Happy", "5 Angry", "b2   love", "9\tSad", "40 Calm"]
    write_post(data, "a17", "what a day", jpeg(17))
    write_post(data, "5", "so annoyed", jpeg(5))
    write_post(data, "b2", b"my dog" + b"\x92s bed", jpeg(2))  # cp1252 right quote: 1 replaced char
    write_post(data, "9", "rainy", None)  # missing image
    write_post(data, "40", None, jpeg(40))  # missing text
    write_post(data, "77", "not in the label file", jpeg(77))  # unlabelled
    (root / "all_data_id_and_label.txt").write_text("\n".join(lines) + "\n")
    return root


# angry=0, bored=1, calm=2, fear=3, happy=4, love=5, sad=6
TUMEMO_EXPECTED = {
    "a17": (4, "what a day", True),
    "5": (0, "so annoyed", True),
    "b2": (5, "my dog\u2019s bed", True),
    "9": (6, "rainy", False),
    "40": (2, None, True),
}


def make_balanced_mvsa_single(root: Path, per_class: tuple[int, int, int], seed: int = 0) -> Path:
    """An MVSA-Single folder with `per_class` posts of positive, neutral, negative; every post complete.

    Each class has its own image colour and its own word in the text, so a model can learn the classes.
    """
    data = root / "data"
    lines = ["ID\ttext,image"]
    words = ("positive", "neutral", "negative")
    n = 0
    for label, count in enumerate(per_class):
        image = jpeg(seed + 3 * label + 1)
        for _ in range(count):
            n += 1
            post_id = str(1000 + n)
            lines.append(f"{post_id}\t{words[label]},{words[label]}")
            write_post(data, post_id, f"post {post_id} is {words[label]}", image)
    (root / "labelResultAll.txt").write_text("\n".join(lines) + "\n")
    return root
