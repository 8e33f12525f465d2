"""The ``hepascreen`` console command (``[project.scripts]``).

::

    hepascreen screen INPUT... -o OUT [options]   screen scans (same options as python -m client.batch)
    hepascreen serve [options]                    run the bundled Triton server in the foreground
    hepascreen merge OUT... -o MERGED             merge shard OUT folders (client.scaleout.merge)
    hepascreen listen -o OUT [options]            DICOM node: receive, screen, send back (client.node)
    hepascreen node status|check [options]        the node's jobs; C-ECHO its destinations
    hepascreen version                            tool, schema and model versions
    hepascreen --version                          the tool's version
"""

from __future__ import annotations

import sys

USAGE = """usage: hepascreen {screen,serve,merge,listen,node,version} ... | --version

  screen INPUT... -o OUT   screen CT scans (hepascreen screen --help)
  serve                    run the bundled Triton server (hepascreen serve --help)
  merge OUT... -o MERGED   merge the OUT folders of shards (hepascreen merge --help)
  listen -o OUT            DICOM node: receive studies, screen, send SEG/SR back (listen --help)
  node status|check        the node's jobs; C-ECHO its destinations (hepascreen node --help)
  version                  tool, result-schema and model versions
"""


def version_info() -> dict:
    """Tool version, result schema version and the bundled model (path and SHA-256)."""
    from client import __version__
    from client.core import contract
    from client.core.errors import ConfigError
    from client.core.paths import model_repository
    from client.pipeline.segmenters import model_file_sha256

    info = {"hepascreen": __version__, "result_schema": contract.SCHEMA_VERSION}
    try:
        repo = model_repository()
        info.update(model_repository=str(repo), model_sha256=model_file_sha256(repo))
    except ConfigError as exc:
        info.update(model_repository=None, model_error=str(exc))
    return info


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd in ("--version", "-V"):
        from client import __version__

        print(f"hepascreen {__version__}")
        return 0
    if cmd == "version":
        for k, v in version_info().items():
            print(f"{k}: {v}")
        return 0
    if cmd == "screen":
        from client.batch import main as screen

        return screen(rest, prog="hepascreen screen")
    if cmd == "merge":
        from client.scaleout.merge import main as merge

        return merge(rest, prog="hepascreen merge")
    if cmd == "serve":
        from client.cli.serve import main as serve

        return serve(rest, prog="hepascreen serve")
    if cmd == "listen":
        from client.node.entry import listen

        return listen(rest, prog="hepascreen listen")
    if cmd == "node":
        from client.node.entry import node_main

        return node_main(rest, prog="hepascreen node")
    print(f"hepascreen: unknown command {cmd!r}\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
