"""The one image decoder and the one tokenizer path: geometry, modes, bad inputs, texts."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from ctmwa_batch.model.preprocess import (
    ImageSpec,
    TextSpec,
    TextTokenizer,
    decode_image,
    decode_images,
    text_missing_reason,
)
from tests import images

SPEC = ImageSpec(size=32, resize_shortest_edge=32)


def test_decode_good_jpeg_is_uint8_square():
    arr, reason = decode_image(images.jpeg(60, 48), SPEC)
    assert reason is None
    assert arr.dtype == np.uint8 and arr.shape == (32, 32, 3)
    assert arr.std() > 5  # a picture, not a flat fill


def test_resize_and_centre_crop_match_clip_image_processor():
    """Same uint8 pixels as transformers' CLIPImageProcessorPil before its rescale/normalise (odd sizes, both aspects)."""
    from transformers import CLIPImageProcessorPil

    spec = ImageSpec(size=24, resize_shortest_edge=28, interpolation="bicubic")
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": 28}, crop_size={"height": 24, "width": 24}, do_normalize=False, do_rescale=False
    )
    for w, h in [(97, 61), (45, 130), (28, 28), (29, 100)]:
        data = images.png(w, h, seed=w)
        ours, reason = decode_image(data, spec)
        assert reason is None
        ref = processor(images=[Image.open(io.BytesIO(data))], return_tensors="np")["pixel_values"][0]  # (3, 24, 24)
        np.testing.assert_array_equal(ours, np.rint(ref.transpose(1, 2, 0)).astype(np.uint8), err_msg=f"{w}x{h}")


def test_jpeg_draft_stays_close_to_full_decode():
    data = images.jpeg(640, 480, seed=1, quality=85)
    drafted, _ = decode_image(data, ImageSpec(size=32, resize_shortest_edge=32, jpeg_draft=True))
    full, _ = decode_image(data, ImageSpec(size=32, resize_shortest_edge=32, jpeg_draft=False))
    diff = np.abs(drafted.astype(int) - full.astype(int))
    assert diff.mean() < 2.0, diff.mean()


@pytest.mark.parametrize(
    ("make", "reason_start"),
    [
        (lambda: None, "null"),
        (lambda: b"", "empty"),
        (images.truncated_jpeg, "truncated image"),
        (images.random_bytes, "not an image"),
        (lambda: images.declared_size_png(100_000, 100_000), "decompression bomb"),
        (lambda: images.declared_size_png(10_000, 10_000), "decompression bomb"),  # between 1x and 2x the limit
        (lambda: b"GIF89a" + b"\x00" * 20, ""),
    ],
    ids=["null", "empty", "truncated-jpeg", "random-bytes", "bomb-huge", "bomb-warning-range", "broken-gif"],
)
def test_unusable_images_are_a_reason_not_an_exception(make, reason_start):
    arr, reason = decode_image(make(), SPEC)
    assert arr is None
    assert reason and reason.startswith(reason_start)
    assert len(reason) <= 160


def test_decompression_bomb_limit_stays_on():
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS > 0
    arr, reason = decode_image(images.declared_size_png(100_000, 100_000), SPEC)
    assert arr is None and reason.startswith("decompression bomb")
    assert Image.MAX_IMAGE_PIXELS is not None


def test_extreme_aspect_ratio_does_not_blow_up_memory():
    strip = images.encode(Image.new("RGB", (100_000, 2), (10, 200, 10)), "PNG")
    arr, reason = decode_image(strip, ImageSpec())  # 224: unguarded, the resize would be 11,200,000 x 224
    assert reason is None and arr.shape == (224, 224, 3)
    assert np.all(np.abs(arr.astype(int) - [10, 200, 10]) <= 1)


def test_one_pixel_image_is_usable():
    arr, reason = decode_image(images.one_pixel(), SPEC)
    assert reason is None
    assert (arr == np.array([200, 30, 30], np.uint8)).all()


def test_cmyk_jpeg_becomes_rgb():
    arr, reason = decode_image(images.cmyk_jpeg(), SPEC)
    assert reason is None and arr.shape == (32, 32, 3)
    ref, _ = decode_image(images.jpeg(64, 48, seed=4), SPEC)
    assert np.abs(arr.astype(int) - ref.astype(int)).mean() < 20  # the same picture, up to CMYK round trip


def test_16bit_grayscale_is_scaled_not_clipped():
    arr, reason = decode_image(images.gray16_png(32768), SPEC)
    assert reason is None
    assert np.all(np.abs(arr.astype(int) - 128) <= 1)  # mid grey, not saturated white
    low, _ = decode_image(images.gray16_png(0), SPEC)
    assert (low == 0).all()


def test_palette_transparency_is_composited_on_white():
    spec = ImageSpec(size=32, resize_shortest_edge=32, interpolation="nearest")
    arr, reason = decode_image(images.palette_transparent_png(), spec)
    assert reason is None
    # 64x32 -> 64x32 (no resize), crop x 16..48: columns 0..15 were transparent (white), 16..31 opaque red.
    assert (arr[:, :16] == 255).all()
    assert (arr[:, 16:] == np.array([255, 0, 0], np.uint8)).all()


def test_rgba_is_composited_on_white():
    arr, reason = decode_image(images.rgba_png(), SPEC)
    assert reason is None
    assert np.all(np.abs(arr[0, 0].astype(int) - [127, 127, 255]) <= 1)


def test_animated_gif_takes_the_first_frame():
    arr, reason = decode_image(images.animated_gif(), SPEC)
    assert reason is None
    assert arr[..., 0].min() > 200 and arr[..., 2].max() < 50  # red, not blue


def test_exif_orientation_is_applied():
    tagged, upright = images.exif_rotated_jpeg()
    spec = ImageSpec(size=32, resize_shortest_edge=32, jpeg_draft=False)
    a, _ = decode_image(tagged, spec)
    b, _ = decode_image(upright, spec)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 8
    # Stored landscape with a white left half; shown upright, the split runs across: white top, black bottom.
    assert a[:12].mean() > 200 and a[-12:].mean() < 50
    assert abs(float(a[:, :16].mean()) - float(a[:, 16:].mean())) < 30


@pytest.mark.parametrize("mode", ["L", "LA", "1", "I", "F", "RGBA", "P"])
def test_other_modes_decode(mode):
    img = Image.fromarray(images.photo_array(40, 30, 5)).convert(mode)
    arr, reason = decode_image(images.encode(img, "TIFF"), SPEC)
    assert reason is None, reason
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8


def test_decode_images_batch_keeps_every_row():
    items = [images.jpeg(), None, images.random_bytes(), b"", images.png(), images.truncated_jpeg()]
    pixels, ok, reasons = decode_images(items, SPEC)
    assert pixels.shape == (6, 32, 32, 3) and pixels.dtype == np.uint8
    assert ok.tolist() == [True, False, False, False, True, False]
    assert reasons[0] is None and reasons[4] is None
    assert [r.split(" ")[0] for r in np.array(reasons, dtype=object)[~ok]] == ["null", "not", "empty", "truncated"]
    assert (pixels[~ok] == 0).all()


def test_decode_is_picklable_for_a_process_pool():
    fn, spec = pickle.loads(pickle.dumps((decode_images, SPEC)))
    pixels, ok, _ = fn([images.jpeg()], spec)
    assert ok.all() and pixels.dtype == np.uint8


def test_image_spec_round_trips_and_rejects_bad_values():
    assert ImageSpec.from_dict(SPEC.to_dict()) == SPEC
    with pytest.raises(ValueError, match="interpolation 'cubic'"):
        ImageSpec(interpolation="cubic")
    with pytest.raises(ValueError, match="resize_shortest_edge"):
        ImageSpec(size=64, resize_shortest_edge=32)


# --------------------------------------------------------------------------------------------------- texts


@pytest.fixture(scope="module")
def tokenizer(encoder_bundle):
    from ctmwa_batch.model.bundle import TOKENIZER, load_bundle

    bundle = load_bundle(encoder_bundle)
    return TextTokenizer(bundle.path(TOKENIZER), bundle.text_spec)


@pytest.mark.parametrize(
    ("text", "reason"),
    [(None, "null"), ("", "empty"), ("   \n\t ", "whitespace only"), ("\u3000", "whitespace only"), ("hi", None)],
)
def test_text_missing_reason(text, reason):
    assert text_missing_reason(text) == reason


def test_tokenize_batch_pads_right_and_marks_missing(tokenizer):
    spec = tokenizer.spec
    texts = ["I love this cat", None, "", "   ", "ok", " ".join(["word"] * 10_000), "😀😢😡"]
    tok = tokenizer.encode(texts)
    assert tok.ok.tolist() == [True, False, False, False, True, True, True]
    assert tok.reasons[1:4] == ["null", "empty", "whitespace only"]
    assert tok.input_ids.dtype == np.int64 and tok.attention_mask.dtype == np.int64
    assert tok.input_ids.shape[1] == spec.max_length  # the 10,000-word text, truncated
    long_row = tok.input_ids[5]
    assert long_row[0] == spec.bos_id and long_row[-1] == spec.eos_id  # truncation keeps the end token
    short = tok.attention_mask[4].sum()
    assert short == 3  # BOS ok EOS
    assert (tok.input_ids[4, short:] == spec.pad_id).all() and (tok.attention_mask[4, short:] == 0).all()
    assert tok.attention_mask[6].sum() >= 3  # emoji-only text is present


def test_tokenizer_matches_transformers(tokenizer, tiny_clip_dir):
    from transformers import AutoTokenizer

    ref_tok = AutoTokenizer.from_pretrained(tiny_clip_dir)
    texts = ["I LOVE this!!", "a photo of a cat 😀", "Café naïve", " ".join(["good"] * 50)]
    ours = tokenizer.encode(texts)
    ref = ref_tok(texts, padding=True, truncation=True, max_length=tokenizer.spec.max_length, return_tensors="np")
    np.testing.assert_array_equal(ours.input_ids, ref["input_ids"])
    np.testing.assert_array_equal(ours.attention_mask, ref["attention_mask"])


def test_tokenizer_is_picklable(tokenizer):
    again = pickle.loads(pickle.dumps(tokenizer))
    np.testing.assert_array_equal(again.encode(["good day"]).input_ids, tokenizer.encode(["good day"]).input_ids)


def test_text_spec_round_trips():
    spec = TextSpec(max_length=16, pad_id=0, bos_id=2, eos_id=3)
    assert TextSpec.from_dict(spec.to_dict()) == spec
