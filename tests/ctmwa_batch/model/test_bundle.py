"""Bundle layout: checksums of every file, partial (encoders-only) bundles, adding the head later."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ctmwa_batch.cli.main import main as cli_main
from ctmwa_batch.errors import BundleError
from ctmwa_batch.model import bundle as B


@pytest.fixture
def bundle_dir(encoder_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the session's encoders bundle, free to break."""
    return Path(shutil.copytree(encoder_bundle, tmp_path / "bundle"))


def test_encoders_bundle_is_partial_and_verified(bundle_dir):
    bundle = B.load_bundle(bundle_dir)
    variant_files = [name for p in ("fp16", "int8") for name in B.encoder_files(p).values()]
    assert sorted(bundle.files) == sorted([*B.ENCODER_FILES, *variant_files])
    assert bundle.precisions == ("fp32", "fp16", "int8")
    assert bundle.has_encoders and not bundle.has_head
    assert bundle.labels is None
    assert len(bundle.model_version) == 16
    assert bundle.dims == {"text_emb": 16, "image_emb": 16}
    assert bundle.image_spec.size == 32 and bundle.text_spec.max_length == 16
    m = bundle.manifest
    for key in ("format_version", "created_at", "encoder", "preprocessing", "opset", "training_metrics", "graphs"):
        assert key in m
    assert m["preprocessing"]["normalized_outputs"] is True
    assert m["graphs"]["image_encoder.onnx"]["inputs"]["pixels"] == {"dtype": "uint8", "shape": ["batch", 32, 32, 3]}
    assert all(len(e["sha256"]) == 64 for e in m["files"].values())


def test_path_of_a_missing_head_says_what_to_do(bundle_dir):
    bundle = B.load_bundle(bundle_dir)
    assert bundle.path(B.IMAGE_ENCODER) == bundle_dir / "image_encoder.onnx"
    with pytest.raises(BundleError, match="encoders-only bundle"):
        bundle.path(B.HEAD)


@pytest.mark.parametrize("name", ["image_encoder.onnx", "text_encoder.onnx", "tokenizer.json"])
def test_one_changed_byte_names_the_file(bundle_dir, name):
    path = bundle_dir / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{name}: changed \(sha256"):
        B.load_bundle(bundle_dir)


def test_missing_and_unexpected_files_are_all_named(bundle_dir):
    (bundle_dir / "text_encoder.onnx").unlink()
    (bundle_dir / "notes.txt").write_text("hi")
    with pytest.raises(BundleError) as e:
        B.load_bundle(bundle_dir)
    assert "text_encoder.onnx: listed in manifest.json but missing" in str(e.value)
    assert "notes.txt: unexpected file" in str(e.value)


def test_truncated_file_is_caught_by_size(bundle_dir):
    path = bundle_dir / "tokenizer.json"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BundleError, match="tokenizer.json: changed"):
        B.load_bundle(bundle_dir)


def test_hand_edited_preprocessing_is_caught(bundle_dir):
    path = bundle_dir / B.MANIFEST
    m = json.loads(path.read_text())
    m["preprocessing"]["image"]["interpolation"] = "nearest"
    path.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="model_version does not match"):
        B.load_bundle(bundle_dir)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "has no manifest.json"),
        ("{not json", "unreadable"),
        ('{"format_version": 99, "files": {}}', "format_version 99"),
    ],
)
def test_bad_manifest(bundle_dir, content, match):
    path = bundle_dir / B.MANIFEST
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    with pytest.raises(BundleError, match=match):
        B.load_bundle(bundle_dir)


def test_not_a_folder(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        B.load_bundle(tmp_path / "nope")


def test_add_head_rewrites_manifest_and_version(bundle_dir, tmp_path):
    before = B.load_bundle(bundle_dir)
    head = tmp_path / "head.onnx"
    head.write_bytes(b"pretend onnx")
    after = B.add_files(
        bundle_dir,
        {B.HEAD: head},
        updates={
            "labels": ["positive", "neutral", "negative"],
            "dims": {"classes": 3},
            "training_metrics": {"valid_acc": 0.7},
        },
    )
    assert after.has_head and after.path(B.HEAD).read_bytes() == b"pretend onnx"
    assert after.model_version != before.model_version
    assert after.labels == ["positive", "neutral", "negative"]
    assert after.dims == {"text_emb": 16, "image_emb": 16, "classes": 3}
    assert after.manifest["preprocessing"] == before.manifest["preprocessing"]
    assert B.load_bundle(bundle_dir).model_version == after.model_version
    with pytest.raises(BundleError, match="already has 'head.onnx'"):
        B.add_files(bundle_dir, {B.HEAD: head})
    with pytest.raises(BundleError, match="derived"):
        B.add_files(bundle_dir, updates={"model_version": "x"})


def test_model_version_is_a_function_of_the_files(encoder_bundle, tmp_path):
    a = Path(shutil.copytree(encoder_bundle, tmp_path / "a"))
    b = Path(shutil.copytree(encoder_bundle, tmp_path / "b"))
    (b / B.MANIFEST).unlink()
    m = B.load_bundle(a).manifest
    rebuilt = B.write_manifest(
        b,
        image=B.load_bundle(a).image_spec,
        text=B.load_bundle(a).text_spec,
        dims=m["dims"],
        encoder=m["encoder"],
        opset=m["opset"],
        created_at="2000-01-01T00:00:00+00:00",
    )
    assert rebuilt.model_version == B.load_bundle(a).model_version  # same files + preprocessing, other date


def test_inspect_cli(encoder_bundle, capsys):
    assert cli_main(["inspect", "--bundle", str(encoder_bundle)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["has_head"] is False and "image_encoder.onnx" in out["files"]


def test_inspect_cli_reports_a_broken_bundle(bundle_dir, capsys):
    (bundle_dir / "tokenizer.json").write_text("{}")
    assert cli_main(["inspect", "--bundle", str(bundle_dir)]) == 2
    assert "tokenizer.json: changed" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- full bundles


@pytest.fixture
def full_dir(full_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the session's full bundle (encoders + head), free to break."""
    return Path(shutil.copytree(full_bundle, tmp_path / "full"))


@pytest.mark.parametrize("name", ["head.onnx", "image_encoder.onnx", "text_encoder.onnx", "tokenizer.json"])
def test_full_bundle_one_changed_byte_names_the_file(full_dir, name):
    path = full_dir / name
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{name}: changed \(sha256") as e:
        B.load_bundle(full_dir)
    assert str(full_dir) in str(e.value) and "re-export" in str(e.value)


def test_full_bundle_one_changed_byte_in_the_manifest_labels_is_caught(full_dir):
    path = full_dir / B.MANIFEST
    text = path.read_text()
    assert text.count('"positive"') == 1
    path.write_text(text.replace('"positive"', '"pasitive"'))  # one byte: a relabelled model is another model
    with pytest.raises(BundleError, match=r"manifest.json: model_version does not match"):
        B.load_bundle(full_dir)


def test_inspect_full_bundle_json(full_bundle, capsys):
    assert cli_main(["inspect", str(full_bundle)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["has_head"] is True and out["verified"] is True
    assert out["labels"] == ["positive", "neutral", "negative"] and out["dims"]["classes"] == 3
    assert out["calibration"]["method"] == "none" and "test_accuracy" in out["training_metrics"]
    assert out["head"]["precision"] == "fp32" and "head.onnx" in out["files"]


def test_inspect_full_bundle_text(full_bundle, capsys):
    assert cli_main(["inspect", "--bundle", str(full_bundle), "--format", "text"]) == 0
    out = capsys.readouterr().out
    version = B.load_bundle(full_bundle).model_version
    for expected in (
        f"model_version {version}",
        "full (scoring-ready)",
        "head.onnx",
        "labels        ['positive', 'neutral', 'negative']",
        "'classes': 3",
        "fp32, translators folded",
        "calibration   none",
        "metrics       valid_accuracy",
        "test_text_evidence_auc",
        "class bias    ",
        "probe blend   ",
        "on its raw embedding; evidence = p(predicted) / (p(predicted) + p(neutral))",
        "weights       text_weight/image_weight: the paper's meta-learned loss weights, not an attribution",
        "verified      yes",
    ):
        assert expected in out, expected


def test_inspect_says_when_a_head_has_no_evidence(full_dir, capsys):
    """A head exported before the evidence outputs: inspect says the columns score null and how to fix it."""
    manifest = json.loads((full_dir / "manifest.json").read_text())
    del manifest["head"]["evidence"], manifest["head"]["class_bias"]
    (full_dir / "manifest.json").write_text(json.dumps(manifest))
    assert cli_main(["inspect", str(full_dir), "--format", "text", "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "evidence      none: text_evidence/image_evidence score null" in out and "re-export" in out
    assert "class bias    none" in out


def test_inspect_text_of_an_encoders_bundle_and_argument_errors(encoder_bundle, full_bundle, capsys):
    assert cli_main(["inspect", str(encoder_bundle), "--format", "text"]) == 0
    out = capsys.readouterr().out
    assert "encoders only" in out and "labels" not in out
    assert cli_main(["inspect"]) == 2
    assert "give the bundle folder" in capsys.readouterr().err
    assert cli_main(["inspect", str(encoder_bundle), "--bundle", str(full_bundle)]) == 2


def test_inspect_names_a_changed_head(full_dir, capsys):
    (full_dir / "head.onnx").write_bytes(b"not a graph")
    assert cli_main(["inspect", str(full_dir)]) == 2
    assert "head.onnx: changed" in capsys.readouterr().err
