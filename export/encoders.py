"""CLIP's image and text encoders as ONNX graphs: the torch modules, their export specs, the preprocessing parity check.

    image_encoder.onnx  pixels uint8 (N, S, S, 3) -> image_emb float32 (N, D): cast, /255, mean/std and
                        NHWC -> NCHW inside the graph, projected and L2-normalised
    text_encoder.onnx   input_ids, attention_mask int64 (N, L) -> text_emb float32 (N, D): EOS pooling (as the
                        source config says), projected and L2-normalised

Each is validated against PyTorch (ctmwa_export.spec); `check_preprocessing_parity` proves that the runtime's own
preprocessing (ctmwa_batch.model.preprocess) plus the graphs reproduce what transformers gives with CLIPImageProcessorPil
and the transformers tokenizer. ctmwa_export.assemble writes them as an encoders-only bundle (`ctmwa-export encoders`).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ctmwa_batch.errors import CtmwaError, ExportValidationError
from ctmwa_batch.model.bundle import ATTENTION_MASK, IMAGE_ENCODER, INPUT_IDS, PIXELS, TEXT_ENCODER, TOKENIZER, Bundle
from ctmwa_batch.model.preprocess import INTERPOLATIONS, ImageSpec, TextSpec, TextTokenizer, decode_images
from ctmwa_batch.model.runtime import RuntimeConfig, create_session
from ctmwa_batch.schema import IMAGE_EMB, TEXT_EMB
from ctmwa_export.precision import DEFAULT_PRECISIONS, check_precisions
from ctmwa_export.spec import DEFAULT_OPSET, ExportSpec

logger = logging.getLogger(__name__)

DEFAULT_SOURCE = "openai/clip-vit-base-patch32"


class ModelSourceError(CtmwaError):
    """The model to export (hub id or local folder) cannot be loaded or is not a CLIP the exporter supports."""


@dataclass(frozen=True)
class EncoderExportConfig:
    """What `ctmwa-export encoders` does."""

    source: str = DEFAULT_SOURCE  # transformers hub id or local folder holding a CLIP model, tokenizer, image processor
    out_dir: Path = Path("bundle")  # the bundle folder to create (must not exist or be empty, unless overwrite)
    revision: str | None = None  # hub revision (branch, tag or commit) of the source; None = the default branch
    opset: int = DEFAULT_OPSET  # ONNX opset of both graphs
    atol: float = 1e-4  # largest |onnxruntime - PyTorch| allowed on the (unit-norm) embeddings
    max_text_length: int | None = None  # tokens per text; None = the model's limit (77 for CLIP)
    extra_batch_sizes: tuple[int, ...] = ()  # validated besides 1, 3 and 7
    dynamo: bool = True  # torch.onnx's dynamo exporter; False = the TorchScript exporter
    jpeg_draft: bool = True  # recorded in the manifest: decode big JPEGs at reduced scale (faster, tiny pixel change)
    overwrite: bool = False  # replace an existing bundle folder
    precisions: tuple[str, ...] = (
        DEFAULT_PRECISIONS  # encoder variants to write (fp32 always; int8, fp16: ctmwa_export.precision)
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "precisions", check_precisions(tuple(self.precisions)))


class ImageEncoder(torch.nn.Module):
    """uint8 NHWC pixels -> L2-normalised CLIP image embedding; pixel normalisation lives in the graph."""

    def __init__(self, clip: torch.nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.clip = clip
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).to(torch.float32)  # (N, 3, S, S)
        x = (x / 255.0 - self.mean) / self.std
        emb = self.clip.get_image_features(pixel_values=x).pooler_output  # (N, D)
        return F.normalize(emb, dim=-1)


class TextEncoder(torch.nn.Module):
    """input_ids, attention_mask -> L2-normalised CLIP text embedding (transformers' own EOS pooling)."""

    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        emb = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output  # (N, D)
        return F.normalize(emb, dim=-1)


# --------------------------------------------------------------------------------------------------- source


def load_clip(source: str, revision: str | None = None) -> tuple[Any, Any, Any]:
    """(CLIPModel in eval mode, fast tokenizer, CLIPImageProcessorPil) from a hub id or a local folder."""
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

    where = f"{source!r}" + (f" at revision {revision!r}" if revision else "")
    looks_local = Path(source).is_absolute() or source.startswith((".", "~")) or source.count("/") > 1
    if looks_local and not Path(source).expanduser().is_dir():
        raise ModelSourceError(
            f"--from {source!r} is not a folder; pass a folder written by save_pretrained or a hub id like {DEFAULT_SOURCE!r}"
        )
    source = str(Path(source).expanduser()) if looks_local else source
    try:
        model = CLIPModel.from_pretrained(source, revision=revision).eval()
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        processor = CLIPImageProcessorPil.from_pretrained(source, revision=revision)
    except (OSError, ValueError, KeyError) as e:
        raise ModelSourceError(
            f"cannot load a CLIP model, tokenizer and image processor from {where}: {e}; pass --from a hub id "
            "(network or HF cache needed) or a folder written by save_pretrained (e.g. fixtures.clip.build_tiny_clip)"
        ) from e
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ModelSourceError(
            f"the tokenizer of {where} has no tokenizers backend (tokenizer.json); the runtime needs one"
        )
    return model, tokenizer, processor


def image_spec_from_processor(processor: Any, jpeg_draft: bool = True) -> ImageSpec:
    """The ImageSpec that reproduces a CLIPImageProcessorPil (shortest-edge resize + centre crop only)."""
    size, crop = processor.size, processor.crop_size
    if not (
        processor.do_resize
        and size.shortest_edge
        and processor.do_center_crop
        and crop.height
        and crop.height == crop.width
    ):
        raise ModelSourceError(
            f"image processor resize {dict(size)} / centre crop {processor.do_center_crop} {dict(crop)} is not "
            "CLIP's shortest-edge resize + square centre crop; only that is supported"
        )
    if not processor.do_rescale or abs(processor.rescale_factor - 1 / 255) > 1e-9:
        raise ModelSourceError(
            f"image processor rescale {processor.do_rescale} x{processor.rescale_factor}: only x1/255 is supported"
        )
    resample = Image.Resampling(int(processor.resample)).name.lower()
    if resample not in INTERPOLATIONS:
        raise ModelSourceError(f"image processor resample {processor.resample!r} has no Pillow equivalent here")
    mean = tuple(float(v) for v in processor.image_mean) if processor.do_normalize else (0.0, 0.0, 0.0)
    std = tuple(float(v) for v in processor.image_std) if processor.do_normalize else (1.0, 1.0, 1.0)
    return ImageSpec(
        size=int(crop.height),
        resize_shortest_edge=int(size.shortest_edge),
        interpolation=resample,
        crop="center",
        mean=mean,
        std=std,
        jpeg_draft=jpeg_draft,
    )


def text_spec_from_tokenizer(tokenizer: Any, model: Any, max_length: int | None = None) -> TextSpec:
    """The TextSpec for a tokenizer and model: max length capped by the model's position embeddings."""
    limit = int(model.config.text_config.max_position_embeddings)
    tok_limit = (
        tokenizer.model_max_length
        if isinstance(tokenizer.model_max_length, int) and tokenizer.model_max_length < 1e6
        else limit
    )
    length = max_length if max_length is not None else min(limit, tok_limit)
    if length > limit:
        raise ModelSourceError(
            f"max text length {length} exceeds the model's {limit} position embeddings; pass --max-text-length <= {limit}"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ModelSourceError("the tokenizer has neither a pad nor an eos token; cannot pad batches")
    return TextSpec(
        max_length=int(length), pad_id=int(pad), bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id
    )


def legacy_pooling(model: Any) -> bool:
    # transformers pools argmax(input_ids) when the config's eos_token_id is 2 (openai's original configs), else the
    # first position of eos_token_id.
    return model.config.text_config.eos_token_id == 2


# --------------------------------------------------------------------------------------------------- specs


def image_encoder_spec(
    image: ImageSpec,
    dim: int,
    *,
    atol: float = 1e-4,
    opset: int = DEFAULT_OPSET,
    extra_batch_sizes: tuple[int, ...] = (),
    dynamo: bool = True,
) -> ExportSpec:
    """ExportSpec of the image encoder: random uint8 images of the bundle's size."""

    def make_inputs(batch_size: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(batch_size)
        return {PIXELS: rng.integers(0, 256, size=(batch_size, image.size, image.size, 3), dtype=np.uint8)}

    return ExportSpec(
        name="image_encoder",
        input_names=(PIXELS,),
        output_names=(IMAGE_EMB,),
        dynamic_axes={PIXELS: {0: "batch"}, IMAGE_EMB: {0: "batch"}},
        make_inputs=make_inputs,
        output_shapes={IMAGE_EMB: ("batch", dim)},
        opset=opset,
        atol=atol,
        extra_batch_sizes=extra_batch_sizes,
        dynamo=dynamo,
    )


def specs_for_bundle(bundle: Bundle) -> dict[str, ExportSpec]:
    """The image and text encoder specs of an exported bundle (graph name -> spec), rebuilt from its manifest and
    tokenizer: what checks its graphs after the export (ctmwa_export.precision.agreement_updates)."""
    from tokenizers import Tokenizer

    dims = bundle.dims
    legacy = str((bundle.manifest.get("encoder") or {}).get("text_pooling", "")).startswith("argmax")
    vocab = Tokenizer.from_file(str(bundle.path(TOKENIZER))).get_vocab_size()
    return {
        "image_encoder": image_encoder_spec(bundle.image_spec, int(dims[IMAGE_EMB])),
        "text_encoder": text_encoder_spec(bundle.text_spec, vocab, int(dims[TEXT_EMB]), legacy_pooling=legacy),
    }


def text_encoder_spec(
    text: TextSpec,
    vocab_size: int,
    dim: int,
    *,
    legacy_pooling: bool,
    atol: float = 1e-4,
    opset: int = DEFAULT_OPSET,
    extra_batch_sizes: tuple[int, ...] = (),
    dynamo: bool = True,
) -> ExportSpec:
    """ExportSpec of the text encoder: rows of random tokens between BOS and EOS, of different lengths, right-padded."""
    specials = {i for i in (text.bos_id, text.eos_id, text.pad_id) if i is not None}
    # With argmax pooling the EOS must stay the largest id of a row, as it is in openai's vocabulary.
    top = text.eos_id if legacy_pooling and text.eos_id is not None else vocab_size
    body = np.array([i for i in range(top) if i not in specials], dtype=np.int64)
    bos = text.bos_id if text.bos_id is not None else int(body[0])
    eos = text.eos_id if text.eos_id is not None else int(body[-1])

    def make_inputs(batch_size: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(1000 + batch_size)
        # Different padded lengths per case; the largest validated batch goes up to the full length.
        seq = text.max_length if batch_size >= 7 else int(rng.integers(3, text.max_length))
        lengths = rng.integers(2, seq + 1, size=batch_size)
        lengths[rng.integers(batch_size)] = seq
        input_ids = np.full((batch_size, seq), text.pad_id, dtype=np.int64)
        attention_mask = np.zeros((batch_size, seq), dtype=np.int64)
        for row, length in enumerate(lengths):
            input_ids[row, 0] = bos
            input_ids[row, 1 : length - 1] = rng.choice(body, size=length - 2)
            input_ids[row, length - 1] = eos
            attention_mask[row, :length] = 1
        return {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}

    return ExportSpec(
        name="text_encoder",
        input_names=(INPUT_IDS, ATTENTION_MASK),
        output_names=(TEXT_EMB,),
        dynamic_axes={
            INPUT_IDS: {0: "batch", 1: "sequence"},
            ATTENTION_MASK: {0: "batch", 1: "sequence"},
            TEXT_EMB: {0: "batch"},
        },
        make_inputs=make_inputs,
        output_shapes={TEXT_EMB: ("batch", dim)},
        opset=opset,
        atol=atol,
        extra_batch_sizes=extra_batch_sizes,
        dynamo=dynamo,
    )


# --------------------------------------------------------------------------------------------------- parity

# Texts that exercise the tokenizer: case, punctuation, unicode, emoji, truncation.
PARITY_TEXTS = (
    "a photo of a cat",
    "I LOVE this!!! Best day ever :)",
    "Terrible service, never again... #fail @shop",
    "Café naïve façade — ünïcödé and 中文 text",
    "😀😢😡 ❤️👍",
    "  leading and trailing spaces  ",
    " ".join(["long"] * 300),
)


def _parity_images(size: int) -> list[bytes]:
    """PNG bytes of a few synthetic images: landscape, portrait, odd sizes, grayscale, palette with transparency."""
    out = []
    shapes = [
        (3 * size + 5, 2 * size + 1, "RGB"),
        (size + 3, 2 * size + 7, "RGB"),
        (size, size, "L"),
        (2 * size + 1, size + 2, "P"),
    ]
    for i, (w, h, mode) in enumerate(shapes):
        y, x = np.mgrid[0:h, 0:w]
        rgb = np.stack(
            [(x * 255) // max(w - 1, 1), (y * 255) // max(h - 1, 1), ((x + y) * 37 + i * 50) % 256], axis=-1
        ).astype(np.uint8)
        img = Image.fromarray(rgb, "RGB")
        if mode == "L":
            img = img.convert("L")
        elif mode == "P":
            img = img.quantize(16)
            img.info["transparency"] = 0
        buf = io.BytesIO()
        img.save(buf, format="PNG", **({"transparency": 0} if mode == "P" else {}))
        out.append(buf.getvalue())
    return out


def check_preprocessing_parity(
    bundle: Bundle, model: Any, tokenizer: Any, processor: Any, atol: float
) -> dict[str, float]:
    """Runtime path (preprocess + ONNX graphs) vs transformers path (CLIPImageProcessorPil / tokenizer + CLIPModel).

    Raises one ExportValidationError listing every mismatch; returns the max |diff| of each embedding.
    """
    failures: list[str] = []
    image_spec, text_spec = bundle.image_spec, bundle.text_spec
    # Texts: same ids and mask from tokenizer.json alone as from the transformers tokenizer.
    ours = TextTokenizer(bundle.path(TOKENIZER), text_spec).encode(list(PARITY_TEXTS))
    ref = tokenizer(
        list(PARITY_TEXTS), padding=True, truncation=True, max_length=text_spec.max_length, return_tensors="np"
    )
    if ours.input_ids.shape != ref["input_ids"].shape or not np.array_equal(ours.input_ids, ref["input_ids"]):
        rows = [
            i
            for i in range(len(PARITY_TEXTS))
            if i >= len(ref["input_ids"])
            or ours.input_ids.shape != ref["input_ids"].shape
            or not np.array_equal(ours.input_ids[i], ref["input_ids"][i])
        ]
        failures.append(
            f"tokenizer.json alone gives other input_ids than the transformers tokenizer for texts {[PARITY_TEXTS[i][:30] for i in rows]}"
        )
    elif not np.array_equal(ours.attention_mask, ref["attention_mask"]):
        failures.append("tokenizer.json alone gives another attention_mask than the transformers tokenizer")
    # Images: same uint8 pixels (after the in-graph normalisation) as CLIPImageProcessorPil's pixel_values.
    images = _parity_images(image_spec.size)
    pixels, ok, reasons = decode_images(images, image_spec)
    if not ok.all():
        failures.append(f"the runtime decoder rejected parity images: {reasons}")
    ref_pixels = processor(images=[Image.open(io.BytesIO(b)) for b in images], return_tensors="np")["pixel_values"]
    mean = np.array(image_spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(image_spec.std, dtype=np.float32).reshape(1, 3, 1, 1)
    normalised = (pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std
    pixel_diff = float(np.abs(normalised - ref_pixels).max()) if normalised.shape == ref_pixels.shape else float("inf")
    if not pixel_diff <= 1e-4:
        failures.append(
            f"decoded pixels differ from CLIPImageProcessorPil's by up to {pixel_diff:.3g} (normalised units)"
        )
    # End to end: the graphs on the runtime's inputs vs transformers on its own inputs.
    config = RuntimeConfig(device="cpu")
    got_image = create_session(bundle.path(IMAGE_ENCODER), config).run({PIXELS: pixels})[IMAGE_EMB]
    got_text = create_session(bundle.path(TEXT_ENCODER), config).run(
        {INPUT_IDS: ours.input_ids, ATTENTION_MASK: ours.attention_mask}
    )[TEXT_EMB]
    with torch.no_grad():
        want_image = F.normalize(
            model.get_image_features(pixel_values=torch.from_numpy(ref_pixels)).pooler_output, dim=-1
        ).numpy()
        want_text = F.normalize(
            model.get_text_features(
                input_ids=torch.from_numpy(ref["input_ids"]), attention_mask=torch.from_numpy(ref["attention_mask"])
            ).pooler_output,
            dim=-1,
        ).numpy()
    diffs = {}
    for name, got, want in ((IMAGE_EMB, got_image, want_image), (TEXT_EMB, got_text, want_text)):
        diffs[name] = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        if not diffs[name] <= atol:
            failures.append(f"{name}: runtime path vs transformers path max |diff| {diffs[name]:.3g} > {atol:g}")
    if failures:
        raise ExportValidationError(
            "preprocessing parity", failures, max_abs_diff=max(diffs.values(), default=pixel_diff)
        )
    logger.info(
        "preprocessing parity: pixels max |diff| %.2g, embeddings %s",
        pixel_diff,
        {k: f"{v:.2g}" for k, v in diffs.items()},
    )
    return diffs


# --------------------------------------------------------------------------------------------------- export


def write_tokenizer(tokenizer: Any, path: Path) -> None:
    """tokenizer.json as the `tokenizers` library reads it, without the padding/truncation state transformers left."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    tok.no_padding()
    tok.no_truncation()
    tok.save(str(path))
