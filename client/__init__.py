"""HepaScreen client library: reading scans, the screening pipeline, the Triton client, results.

Public names are imported lazily so that ``client.contract`` and ``client.errors``
stay cheap to import (postprocess and the Triton model import them).
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"  # the one home of the version (pyproject reads it)

_EXPORTS = {
    "screen_scan": "client.pipeline",
    "ScreenConfig": "client.pipeline",
    "ScanResult": "client.pipeline",
    "Segmenter": "client.pipeline",
    "TritonSegmenter": "client.pipeline",
    "MaskFolderSegmenter": "client.pipeline",
    "screen_study": "client.study",
    "StudyResult": "client.study",
    "ResultStore": "client.results",
    "read_rows": "client.results",
    "ScanVolume": "client.scan",
    "PreprocessRecord": "client.preprocess",
    "PreprocessSpec": "client.preprocess",
    "preprocess": "client.preprocess",
    "preprocess_scan": "client.preprocess",
    "preprocess_windows": "client.preprocess",
    "to_scan_grid": "client.preprocess",
    "normalise_network_input": "client.preprocess",
    "read_scan": "client.io",
    "read_label_map": "client.io",
    "read_image_info": "client.io",
    "write_label_map": "client.io",
    "discover": "client.discover",
    "ScanSource": "client.discover",
    "EmbeddedServer": "client.server",
    "SegmentationClient": "client.triton",
    "SupervisedSegmenter": "client.supervisor",
    "ScreeningError": "client.errors",
    "ScanReadError": "client.errors",
    "PreprocessError": "client.errors",
    "InferenceError": "client.errors",
    "MeasurementError": "client.errors",
    "ConfigError": "client.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'client' has no attribute {name!r}")
