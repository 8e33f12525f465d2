"""Layer 4, scale-out: many scans at once. Ray actors (``ray_runner``), fixed shards of an
archive (``shard``) and merging shard OUT folders (``merge``).

May import: every layer below (``core``, ``reading``, ``serving``, ``outputs``,
``pipeline``).
"""
