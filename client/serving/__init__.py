"""Layer 2, serving: talking to Triton over gRPC (``triton``: the served model parsed into
one typed value, synchronous inference), the bundled server and its supervisor
(``server``, ``supervisor``), several servers behind one pool (``endpoints``) and the GPU
memory budget of one process (``gpu``).

May import: ``client.core``, ``client.reading``.
"""
