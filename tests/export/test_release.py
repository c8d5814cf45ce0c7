"""ctmwa_export.release: the release config, reusing a bundle's encoders, the validate step's smoke score."""

from __future__ import annotations

import pytest

from ctmwa_batch.model.bundle import load_bundle
from ctmwa_export import release


def test_config_needs_exactly_one_training_input(tmp_path):
    with pytest.raises(release.ReleaseError, match="exactly one of training_posts .* got none"):
        release.ReleaseConfig(models_root=str(tmp_path))
    with pytest.raises(release.ReleaseError, match=r"got \['training_posts', 'checkpoint'\]"):
        release.ReleaseConfig(models_root=str(tmp_path), training_posts="p", checkpoint="c")
    config = release.ReleaseConfig.from_params(
        {"models_root": str(tmp_path), "checkpoint": "c", "epochs": None, "unrelated": 1}
    )
    assert not config.trains and config.epochs is None


def test_prepare_checks_inputs_and_makes_a_work_folder(tmp_path):
    with pytest.raises(release.ReleaseError, match="training_posts '/nope.parquet' does not exist"):
        release.prepare({"models_root": str(tmp_path), "training_posts": "/nope.parquet"}, "run")
    state = release.prepare(
        {"models_root": str(tmp_path), "checkpoint": str(tmp_path)}, "manual__2026-01-01T00:00:00+00:00"
    )
    assert state["work_dir"].startswith(str(tmp_path / ".staging" / "manual__2026-01-01T00_00_00_00_00"))


def test_encoders_only_of_a_full_bundle_is_the_encoders_bundle(full_bundle, encoder_bundle, tmp_path):
    out = release.encoders_only(full_bundle, tmp_path / "enc")
    assert sorted(out.files) == sorted(load_bundle(encoder_bundle).files) and not out.has_head
    assert out.precisions == load_bundle(encoder_bundle).precisions == ("fp32", "fp16", "int8")
    assert out.manifest["encoder_variants"] == load_bundle(encoder_bundle).manifest["encoder_variants"]
    assert out.model_version == load_bundle(encoder_bundle).model_version  # features made with them stay valid


def test_validate_scores_generated_posts(full_bundle, tmp_path):
    state = {"work_dir": str(tmp_path), "config": {"models_root": str(tmp_path), "checkpoint": "c", "smoke_rows": 12}}
    result = release.validate(state, str(full_bundle))
    assert result["smoke"]["rows"] == 22 and result["smoke"]["by_status"]["no_content"] == 2
    assert result["labels"] == ["positive", "neutral", "negative"]
