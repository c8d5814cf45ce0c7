"""ctmwa_batch.settings: defaults, CTMWA_* environment variables, DAG param overrides, errors that name the fix."""

from __future__ import annotations

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
    params = {"output_root": "/param/scores", "batch_size": None, "device": "", "overwrite": True, "partition_date": "2026-01-05"}
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
