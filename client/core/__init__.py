"""Layer 0, the foundation: the model contract (``contract``: class ids, tensor names, the
result schema, grade rule and colours, the OUT layout's folder names, concurrency defaults),
the error types (``errors``), atomic file writes (``atomic``) and where the shipped model
lives (``paths``).

May import: nothing else from ``client`` (``postprocess``, ``training`` and the Triton model
import this layer, so it stays cheap and free of numpy-heavy code).
"""
