"""The one image decoder and the one tokenizer path, shared by training features and scoring.

Images: bytes -> RGB uint8 (S, S, 3), CLIP's way (shortest side resized, centre crop). Normalisation (mean/std)
happens inside the image encoder graph, so what travels between processes is uint8, a quarter of float32.
Texts: the `tokenizers` library on the bundle's tokenizer.json, truncated and padded to the batch's longest row.

A bad input is a per-row result (missing + a short reason), never an exception that stops a batch. The decode
functions are top-level and take a frozen, picklable spec, so a scorer can run them in a process pool.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ctmwa_batch.errors import BundleError

logger = logging.getLogger(__name__)

# Pillow filter names as they appear in a manifest.
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
CROPS = ("center",)
MAX_REASON_CHARS = 160
MAX_ASPECT = 20  # longest / shortest side kept before resizing (see _limit_aspect)

# OpenAI CLIP's pixel statistics (on [0, 1] pixels), the defaults of `openai/clip-vit-base-patch32`.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageSpec:
    """How an image becomes encoder input; read from the bundle manifest, never from constants."""

    size: int = 224  # side of the square crop the image encoder takes (pixels)
    resize_shortest_edge: int = 224  # the shortest side is resized to this before the crop (>= size)
    interpolation: str = "bicubic"  # Pillow resampling filter, a key of INTERPOLATIONS
    crop: str = "center"  # where the square is cut from the resized image; only "center" (CLIP's way)
    mean: tuple[float, float, float] = CLIP_MEAN  # per-channel mean on [0, 1] pixels, applied inside the graph
    std: tuple[float, float, float] = CLIP_STD  # per-channel std on [0, 1] pixels, applied inside the graph
    jpeg_draft: bool = True  # let libjpeg decode big JPEGs at 1/2, 1/4 or 1/8 scale (never below the resize target)

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} unknown; use one of {sorted(INTERPOLATIONS)}")
        if self.crop not in CROPS:
            raise ValueError(f"crop {self.crop!r} unsupported; use one of {list(CROPS)}")
        if not 0 < self.size <= self.resize_shortest_edge:
            raise ValueError(
                f"size {self.size} and resize_shortest_edge {self.resize_shortest_edge}: need 0 < size <= resize_shortest_edge"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean {self.mean} / std {self.std}: need three values each, std > 0")

    def to_dict(self) -> dict:
        """JSON-ready form, as stored in manifest.json."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> ImageSpec:
        """Inverse of to_dict; unknown keys are an error so that a newer manifest is not half-read."""
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)


@dataclass(frozen=True)
class TextSpec:
    """How a text becomes encoder input; read from the bundle manifest."""

    max_length: int = 77  # tokens per text, special tokens included; longer texts are truncated
    pad_id: int = 49407  # token id of the padding (attention_mask is 0 there)
    bos_id: int | None = 49406  # start token the tokenizer adds (informational, for other runtimes)
    eos_id: int | None = 49407  # end token the tokenizer adds; the text graph pools its hidden state
    padding_side: str = "right"  # CLIP pads on the right

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length {self.max_length}: need at least 2 (start and end tokens)")
        if self.padding_side != "right":
            raise ValueError(f"padding_side {self.padding_side!r} unsupported; CLIP encoders take 'right'")

    def to_dict(self) -> dict:
        """JSON-ready form, as stored in manifest.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TextSpec:
        """Inverse of to_dict."""
        return cls(**d)


# --------------------------------------------------------------------------------------------------- images


def _short_reason(prefix: str, e: BaseException | None = None) -> str:
    reason = prefix if e is None else f"{prefix}: {type(e).__name__}: {e}"
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 3] + "..."


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited on white (as transformers' convert_to_rgb does)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit / 32-bit grayscale: Pillow's own convert clips at 255, which whitens almost everything.
        a = np.asarray(img)
        if img.mode == "F":
            a = np.nan_to_num(a.astype(np.float32))
            scale = 1.0 if a.max() <= 1.0 else 1.0 / 255.0
            a8 = np.clip(a * scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            a8 = ((np.clip(a.astype(np.int64), 0, 65535) + 128) // 257).astype(np.uint8)
        return Image.fromarray(a8, mode="L").convert("RGB")
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _limit_aspect(img: Image.Image) -> Image.Image:
    """Cut an extremely elongated image (a 1 x 100,000 strip) to MAX_ASPECT around its centre before resizing.

    Resizing its short side to 224 would otherwise blow the long side up to millions of pixels; the centre crop that
    follows keeps only the middle anyway, so the result only moves by a sub-pixel rounding of the resize scale.
    """
    w, h = img.size
    if w > MAX_ASPECT * h:
        keep = MAX_ASPECT * h
        return img.crop(((w - keep) // 2, 0, (w - keep) // 2 + keep, h))
    if h > MAX_ASPECT * w:
        keep = MAX_ASPECT * w
        return img.crop((0, (h - keep) // 2, w, (h - keep) // 2 + keep))
    return img


def _resize_crop(img: Image.Image, spec: ImageSpec) -> Image.Image:
    """Shortest side to spec.resize_shortest_edge (long side floored, as CLIP's processor does), then centre crop."""
    w, h = img.size
    target = spec.resize_shortest_edge
    if w <= h:
        new_w, new_h = target, int(target * h / w)
    else:
        new_w, new_h = int(target * w / h), target
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample=INTERPOLATIONS[spec.interpolation])
    top = (new_h - spec.size) // 2
    left = (new_w - spec.size) // 2
    if (top, left) != (0, 0) or (new_w, new_h) != (spec.size, spec.size):
        img = img.crop((left, top, left + spec.size, top + spec.size))
    return img


def decode_image(data: bytes | None, spec: ImageSpec) -> tuple[np.ndarray | None, str | None]:
    """One image's bytes -> (uint8 (S, S, 3), None), or (None, short reason) when it is missing or unusable."""
    if data is None:
        return None, "null"
    if len(data) == 0:
        return None, "empty"
    try:
        with Image.open(io.BytesIO(data)) as img:
            # Pillow refuses above twice MAX_IMAGE_PIXELS and only warns above it; untrusted input stops at the limit.
            # (Checked here rather than by turning the warning into an error: warning filters are process-global.)
            limit = Image.MAX_IMAGE_PIXELS
            if limit and img.width * img.height > limit:
                return None, f"decompression bomb: {img.width}x{img.height} pixels exceeds the limit of {limit}"
            if spec.jpeg_draft and img.format == "JPEG":
                img.draft(None, (spec.resize_shortest_edge, spec.resize_shortest_edge))
            img.load()  # first frame of an animated image
            ImageOps.exif_transpose(img, in_place=True)  # no copy when there is nothing to rotate
            rgb = _to_rgb(_limit_aspect(img))
            out = np.asarray(_resize_crop(rgb, spec), dtype=np.uint8)
    except Image.DecompressionBombError as e:
        return None, _short_reason("decompression bomb", e)
    except Image.UnidentifiedImageError:
        return None, "not an image"
    except Exception as e:  # noqa: BLE001 - any decoder failure is a per-row result by contract
        if "truncated" in str(e):
            return None, _short_reason("truncated image", e)
        return None, _short_reason("undecodable image", e)
    if out.shape != (spec.size, spec.size, 3):
        return None, f"decoded to shape {out.shape}, expected {(spec.size, spec.size, 3)}"
    return out, None


# A small target for checks: libjpeg then decodes big JPEGs at 1/8 scale, a full pass over the stream (truncation
# shows) at a fraction of the cost of a full-size decode.
CHECK_SPEC = ImageSpec(size=64, resize_shortest_edge=64)


def image_problem(data: bytes | None, spec: ImageSpec = CHECK_SPEC, header_only: bool = False) -> str | None:
    """Why image bytes are unusable, as `decode_image` (the one decoder) finds it, or None when they decode;
    `header_only` only opens the image (format and size, no pixel decoded)."""
    if not header_only:
        return decode_image(data, spec)[1]
    if not data:
        return "null" if data is None else "empty"
    try:
        with Image.open(io.BytesIO(data)):
            return None
    except Image.UnidentifiedImageError:
        return "not an image"
    except Exception as e:  # noqa: BLE001 - any decoder failure is a reason, not an exception
        return _short_reason("undecodable image", e)


def decode_images(items: Sequence[bytes | None], spec: ImageSpec) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """A batch of image bytes -> (uint8 (N, S, S, 3) with zeros where unusable, ok bool (N,), reasons (N,))."""
    n = len(items)
    pixels = np.zeros((n, spec.size, spec.size, 3), dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)
    reasons: list[str | None] = [None] * n
    for i, data in enumerate(items):
        arr, reason = decode_image(data, spec)
        if arr is None:
            reasons[i] = reason
        else:
            pixels[i] = arr
            ok[i] = True
    return pixels, ok, reasons


# --------------------------------------------------------------------------------------------------- texts


@dataclass(frozen=True)
class TokenizedTexts:
    """A batch of texts as text-encoder input. Rows that are not ok hold a dummy encoding; do not encode them."""

    input_ids: np.ndarray  # int64 (N, L): L is the longest usable row of the batch (at most max_length)
    attention_mask: np.ndarray  # int64 (N, L): 1 on real tokens, 0 on padding
    ok: np.ndarray  # bool (N,): the text is present and usable
    reasons: list[str | None]  # None where ok, else why the text is missing


def text_missing_reason(text: str | None) -> str | None:
    """Why a text counts as missing (DESIGN section 4), or None when it is present."""
    if text is None:
        return "null"
    if not isinstance(text, str):
        return f"not a string ({type(text).__name__})"
    if text == "":
        return "empty"
    if text.isspace():
        return "whitespace only"
    return None


class TextTokenizer:
    """The bundle's tokenizer.json through the `tokenizers` library, truncating and padding as the manifest says."""

    def __init__(self, tokenizer_file: str | Path, spec: TextSpec):
        from tokenizers import Tokenizer

        self.spec = spec
        try:
            self._tok = Tokenizer.from_file(str(tokenizer_file))
        except Exception as e:
            raise BundleError(
                f"cannot load tokenizer {str(tokenizer_file)!r} with the tokenizers library: {e}; "
                "re-export the encoders (ctmwa-export encoders) to write a tokenizer.json"
            ) from e
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=spec.max_length)

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "json": self._tok.to_str()}

    def __setstate__(self, state: dict) -> None:
        from tokenizers import Tokenizer

        self.spec = state["spec"]
        self._tok = Tokenizer.from_str(state["json"])

    def encode(self, texts: Sequence[str | None]) -> TokenizedTexts:
        """Tokenize a batch; null, empty and whitespace-only texts are missing (ok False), never an error."""
        n = len(texts)
        reasons = [text_missing_reason(t) for t in texts]
        ok = np.array([r is None for r in reasons], dtype=bool)
        present = [t for t, good in zip(texts, ok) if good]
        encodings = self._tok.encode_batch(present, add_special_tokens=True) if present else []
        length = max((len(e.ids) for e in encodings), default=2)
        input_ids = np.full((n, length), self.spec.pad_id, dtype=np.int64)
        attention_mask = np.zeros((n, length), dtype=np.int64)
        rows = np.flatnonzero(ok)
        for row, enc in zip(rows, encodings):
            ids = enc.ids
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        # Missing rows keep a harmless dummy (one real token) so that the arrays stay rectangular.
        attention_mask[~ok, 0] = 1
        return TokenizedTexts(input_ids=input_ids, attention_mask=attention_mask, ok=ok, reasons=reasons)
