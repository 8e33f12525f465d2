"""One exception family, translated at the boundaries (STYLE.md 4)."""

from __future__ import annotations


class ScreeningError(Exception):
    """Base class of every error HepaScreen raises on purpose."""


class ScanReadError(ScreeningError):
    """A scan could not be read or is not a usable CT volume (message names the file)."""


class PreprocessError(ScreeningError):
    """A volume could not be turned into a model tensor or mapped back."""


class InferenceError(ScreeningError):
    """The Triton server or the model failed, or does not match the contract.

    ``status`` is the gRPC status name when the failure came from gRPC
    (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``INVALID_ARGUMENT``, ...), else None.
    """

    def __init__(self, message: str = "", *, status: str | None = None):
        super().__init__(message)
        self.status = status


class MeasurementError(ScreeningError):
    """Inputs to the measurement are invalid (shapes, NaN, spacing, labels)."""


class ConfigError(ScreeningError):
    """A configuration or command-line value is invalid."""
