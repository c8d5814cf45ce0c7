"""ctmwa_batch.settings: defaults, CTMWA_* environment variables, DAG param overrides, errors that name the fix."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys

import pytest

from ctmwa_batch.settings import CURRENT, RUN_OVERRIDES, Settings, SettingsError, override_param_specs


def test_defaults_without_environment():
    s = Settings.load(environ={})
    assert s == Settings()
    assert s.model_version == CURRENT
    assert s.device == "cuda"  # GPU workers: a missing GPU must fail, not fall back to CPU
    assert s.input_path("2026-01-05") == "lake/posts/dt=2026-01-05"


def test_environment_is_parsed_per_field_type():
    env = {
        "CTMWA_INPUT_ROOT": "s3://lake/posts/",
        "CTMWA_BATCH_SIZE": "64",
        "CTMWA_INPUT_WAIT_HOURS": "1.5",
        "CTMWA_DEVICE": "cpu",
        "CTMWA_PARTITION_TEMPLATE": "date={date}/kind=posts",
        "CTMWA_QUEUE": "  ",  # blank = unset
        "UNRELATED": "x",
    }
    s = Settings.load(environ=env)
    assert (s.batch_size, s.input_wait_hours, s.device, s.queue) == (64, 1.5, "cpu", "gpu")
    assert s.input_path("2026-01-05") == "s3://lake/posts/date=2026-01-05/kind=posts"


def test_params_override_environment_and_none_means_unset():
    env = {"CTMWA_OUTPUT_ROOT": "/env/scores", "CTMWA_BATCH_SIZE": "64"}
    params = {
        "output_root": "/param/scores",
        "batch_size": None,
        "device": "",
        "overwrite": True,
        "partition_date": "2026-01-05",
    }
    s = Settings.load(environ=env, overrides=params)
    assert s.output_root == "/param/scores"
    assert s.batch_size == 64  # None leaves the environment's value
    assert s.device == "cuda"  # "" too
    # Keys that are not settings (overwrite, partition_date) are ignored, so a run's whole params dict can be passed.


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CTMWA_BATCH_SIZE": "lots"}, "CTMWA_BATCH_SIZE = 'lots': expected int"),
        ({"CTMWA_BATCH_SIZE": "0"}, "batch_size = 0: must be at least 1"),
        ({"CTMWA_DEVICE": "tpu"}, "device 'tpu' unknown"),
        ({"CTMWA_PARTITION_TEMPLATE": "dt=today"}, "has no {date}"),
        ({"CTMWA_SHARD_RETRIES": "-1"}, "shard_retries = -1: must not be negative"),
    ],
)
def test_bad_values_name_the_variable(env, needle):
    with pytest.raises(SettingsError, match=needle.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        Settings.load(environ=env)


def test_bad_param_type_names_the_param():
    with pytest.raises(SettingsError, match="param 'batch_size' = 'big'"):
        Settings.load(environ={}, overrides={"batch_size": "big"})
    with pytest.raises(SettingsError, match="param 'batch_size' = 2.5"):
        Settings.load(environ={}, overrides={"batch_size": 2.5})


def test_settings_are_frozen_and_documented():
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.batch_size = 1  # type: ignore[misc]
    source = inspect.getsource(sys.modules[Settings.__module__])
    for f in dataclasses.fields(Settings):
        line = next(line for line in source.splitlines() if line.strip().startswith(f"{f.name}:"))
        assert "#" in line, f"field {f.name} has no comment"


def test_override_param_specs_cover_run_time_settings():
    specs = override_param_specs()
    assert set(specs) == set(RUN_OVERRIDES)
    assert specs["batch_size"]["type"] == ["null", "integer"] and specs["batch_size"]["minimum"] == 1
    assert specs["device"]["enum"] == [None, "auto", "cpu", "cuda"]
    assert all("null" in spec["type"] and spec["description"] for spec in specs.values())


def test_settings_build_the_job_config_with_one_set_of_defaults():
    from ctmwa_batch import config
    from ctmwa_batch.config import JobConfig, ScoreConfig
    from ctmwa_batch.model import runtime

    s = Settings.load(environ={"CTMWA_PASSTHROUGH": "lang, user_id", "CTMWA_DEVICE": "cpu", "CTMWA_BATCH_SIZE": "32"})
    job = s.job_config(overwrite=True)
    assert job.score == s.score_config() == ScoreConfig(device="cpu", batch_size=32, passthrough=("lang", "user_id"))
    assert (job.overwrite, job.max_rows_per_shard) == (True, s.max_rows_per_shard)
    assert JobConfig.from_dict(job.to_dict()) == job  # what travels through XCom
    # one definition of each default and of the device names; only the deployed device default differs (cuda)
    d, j = Settings(), JobConfig()
    assert (d.batch_size, d.max_rows_per_shard, d.id_column, d.text_column, d.image_column) == (
        j.score.batch_size,
        j.max_rows_per_shard,
        j.score.id_column,
        j.score.text_column,
        j.score.image_column,
    )
    assert (d.device, j.score.device) == ("cuda", "auto")
    # the runtime checks device names with config's one list (no list of its own)
    assert runtime._check_device_name is config.check_device and not hasattr(runtime, "DEVICES")
    assert override_param_specs()["device"]["enum"][1:] == list(config.DEVICES)


def test_fetch_settings_reach_the_score_config_and_the_cli():
    from ctmwa_batch.cli.score import add_arguments, config_from

    s = Settings.load({"CTMWA_MAX_FETCH_FAILURES": "3", "CTMWA_FETCH_CONCURRENCY": "8"})
    assert (s.score_config().max_fetch_failures, s.score_config().fetch_concurrency) == (3, 8)
    assert Settings.load({}, {"max_fetch_failures": 0}).job_config().score.max_fetch_failures == 0
    with pytest.raises(SettingsError, match="max_fetch_failures"):
        Settings.load({"CTMWA_MAX_FETCH_FAILURES": "-1"})
    assert override_param_specs()["max_fetch_failures"]["minimum"] == 0
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--bundle", "b", "--input", "i", "--output", "o", "--fetch-concurrency", "16", "--max-fetch-failures", "2"]
    )
    assert (config_from(args).score.fetch_concurrency, config_from(args).score.max_fetch_failures) == (16, 2)
