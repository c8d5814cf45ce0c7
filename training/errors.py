"""Errors of the training package; all are `CtmwaError`s, so the CLI prints them as one line and exits 2."""

from ctmwa_batch.errors import CtmwaError, DatasetError

__all__ = ["CheckpointError", "ConfigError", "CtmwaError", "DatasetError"]


class ConfigError(CtmwaError):
    """A model or training configuration has an unknown key or a value out of range."""


class CheckpointError(CtmwaError):
    """A checkpoint folder lacks a file, or its weights do not fit its config."""
