"""HepaScreen client library: reading scans, the screening pipeline, the Triton client, results.

Public names are imported lazily so that ``client.core.contract`` and ``client.core.errors``
stay cheap to import (postprocess and the Triton model import them).
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"  # the one home of the version (pyproject reads it)

_EXPORTS = {
    "screen_scan": "client.pipeline.screen",
    "ScreenConfig": "client.pipeline.screen",
    "ScanResult": "client.pipeline.screen",
    "Segmenter": "client.pipeline.segmenters",
    "Segmentation": "client.pipeline.segmenters",
    "TritonSegmenter": "client.pipeline.segmenters",
    "MaskFolderSegmenter": "client.pipeline.segmenters",
    "open_segmenter": "client.pipeline.segmenters",
    "screen_study": "client.pipeline.study",
    "StudyResult": "client.pipeline.study",
    "ResultStore": "client.outputs.results",
    "read_rows": "client.outputs.results",
    "ScanVolume": "client.reading.scan",
    "PreprocessRecord": "client.reading.preprocess",
    "PreprocessSpec": "client.reading.preprocess",
    "preprocess": "client.reading.preprocess",
    "preprocess_scan": "client.reading.preprocess",
    "preprocess_windows": "client.reading.preprocess",
    "to_scan_grid": "client.reading.preprocess",
    "normalise_network_input": "client.reading.preprocess",
    "read_scan": "client.reading.io",
    "read_label_map": "client.reading.io",
    "read_image_info": "client.reading.io",
    "write_label_map": "client.reading.io",
    "discover": "client.reading.discover",
    "ScanSource": "client.reading.discover",
    "EmbeddedServer": "client.serving.server",
    "SegmentationClient": "client.serving.triton",
    "SupervisedSegmenter": "client.serving.supervisor",
    "EndpointPool": "client.serving.endpoints",
    "InferenceFutures": "client.serving.futures",
    "ServedModel": "client.serving.model",
    "Transport": "client.serving.model",
    "ScreeningError": "client.core.errors",
    "ScanReadError": "client.core.errors",
    "PreprocessError": "client.core.errors",
    "InferenceError": "client.core.errors",
    "MeasurementError": "client.core.errors",
    "ConfigError": "client.core.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'client' has no attribute {name!r}")
