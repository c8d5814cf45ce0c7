"""Typed errors. Each names the bad value and the fix; CLIs print them without a traceback."""


class CtmwaError(Exception):
    """A problem the user can fix (bad input, bad configuration, missing dependency)."""


class InputSchemaError(CtmwaError):
    """A table lacks a column or has one of the wrong type; the whole input is unusable."""


class BundleError(CtmwaError):
    """A model bundle is missing a file, has a wrong checksum or an unreadable manifest."""


class ProviderUnavailable(CtmwaError):
    """An ONNX Runtime execution provider (or onnxruntime itself) that was asked for is not available."""


class DatasetError(CtmwaError):
    """A raw dataset or a features file is malformed (names the file, line or column)."""


class ExportValidationError(CtmwaError):
    """An exported ONNX graph disagrees with PyTorch; carries every failing check."""

    def __init__(self, graph: str, failures: list[str], max_abs_diff: float | None = None):
        self.graph = graph
        self.failures = list(failures)
        self.max_abs_diff = max_abs_diff
        head = f"export of {graph!r} failed validation ({len(self.failures)} problem(s)"
        if max_abs_diff is not None:
            head += f", max |diff| {max_abs_diff:.3g}"
        super().__init__(head + "):\n  - " + "\n  - ".join(self.failures))
