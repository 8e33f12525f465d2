"""Layer 4, scale-out: many scans at once. The one executor interface over a thread pool
and Ray actors (``executor``, ``ray_runner``), fixed shards of an archive (``shard``) and
merging shard OUT folders (``merge``).

May import: every layer below (``core``, ``reading``, ``serving``, ``outputs``,
``pipeline``).
"""
