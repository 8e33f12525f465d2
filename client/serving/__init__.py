"""Layer 2, serving: talking to Triton over gRPC. ``model``: the served model parsed once
into one typed value (``ServedModel``) and the ``Transport`` protocol (one synchronous
``infer(batch) -> {output name: array}``), implemented by ``triton`` (one server),
``supervisor`` (the bundled server or a remote one behind a watchdog) and ``endpoints``
(several servers behind one pool); ``futures``: the one layer of requests in flight over
any transport; ``server``: the bundled server; ``gpu``: the GPU memory budget of one
process.

May import: ``client.core``, ``client.reading``.
"""
