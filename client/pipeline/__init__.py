"""Layer 3, the pipeline: one scan through read -> segment -> measure -> write
(``screen``: ``ScreenConfig``, ``screen_scan``; ``segmenters``: the ``Segmenter``
protocol, ``TritonSegmenter``, ``MaskFolderSegmenter`` and the one ``open_segmenter``)
and one study as a whole (``study``: series rounds, ``screen_study``). The measurement
itself is ``postprocess``.

May import: ``client.core``, ``client.reading``, ``client.serving``, ``client.outputs``,
``postprocess``.
"""
