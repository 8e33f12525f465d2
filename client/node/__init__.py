"""The DICOM node (``hepascreen listen``): a front end to the same screening pipeline.

It receives studies from a PACS (C-STORE SCP with C-ECHO, AE title and peer
whitelist), keeps every instance durable in a spool before acknowledging it, decides
when a study is complete (idle over the whole study, no open association that sent to
it, the last one released rather than aborted), screens it with
:func:`client.pipeline.screen.screen_scan` into the usual results store, and sends the DICOM
SEG and SR back by C-STORE with UIDs fixed by the source, the model and the settings
(a re-send gives the same objects). Job state lives in SQLite and survives ``kill -9``.

Modules: :mod:`.config` (NodeConfig, YAML + flags), :mod:`.spool` (durable instances),
:mod:`.jobs` (states, associations, sends), :mod:`.scp` (the receiver),
:mod:`.sender` (C-STORE/C-ECHO with failure classes), :mod:`.service` (the threads),
:mod:`.entry` (``hepascreen listen`` / ``hepascreen node``). Layer 5. May import: every layer below it (core, reading, serving, outputs,
pipeline, scaleout); only the commands (``client.cli``) import it.
"""

from __future__ import annotations

from .config import Destination, NodeConfig, Peer, load_config
from .jobs import STATES, JobStore
from .service import Node, check_destinations, node_paths, node_status
from .spool import Spool, series_key, study_key

__all__ = [
    "STATES",
    "Destination",
    "JobStore",
    "Node",
    "NodeConfig",
    "Peer",
    "Spool",
    "check_destinations",
    "load_config",
    "node_paths",
    "node_status",
    "series_key",
    "study_key",
]
