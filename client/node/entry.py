"""``hepascreen listen`` and ``hepascreen node status|check``: parse, validate, call the library.

::

    hepascreen listen [--config node.yaml] -o OUT [--port N] [--ae-title AE] [--host ADDR]
                      [--accept CALLING_AE[@HOST]]... [--send-to AE@HOST:PORT]...
                      [--idle-seconds S] [--max-hold-seconds S]
                      [--masks DIR] [--label-map NAME] [--url HOST:PORT] [--device cpu|gpu]
                      [--series best|all] [--tls-cert PEM --tls-key PEM --tls-ca PEM]
    hepascreen node status -o OUT [--json]
    hepascreen node check [--config node.yaml] [--send-to AE@HOST:PORT]... [--ae-title AE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from client.core.errors import ConfigError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="node configuration (YAML; docs/pacs.md)")
    p.add_argument("--ae-title", help="the node's AE title (default HEPASCREEN)")
    p.add_argument("--send-to", action="append", metavar="AE@HOST:PORT",
                   help="results destination (repeatable; replaces the file's list)")  # fmt: skip


def listen_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Receive studies, screen them, send SEG/SR back."
    )
    _common(p)
    p.add_argument("-o", "--out", required=True, help="OUT folder (results, node/ state)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 11112)")
    p.add_argument("--accept", action="append", metavar="CALLING_AE[@HOST]",
                   help="peer allowed to send (repeatable; '*' = any AE title)")  # fmt: skip
    p.add_argument("--idle-seconds", type=float, help="a study is ready after this idle time (30)")
    p.add_argument("--max-hold-seconds", type=float, help="an aborted study waits this long (3600)")
    p.add_argument("--masks", help="label maps DIR/<series_key>.nii.gz instead of the model")
    p.add_argument("--label-map", help="label values of --masks (default|totalsegmentator)")
    p.add_argument("--url", help="Triton server HOST:PORT (default: the bundled server)")
    p.add_argument("--device", choices=("cpu", "gpu"), help="measurement device (cpu)")
    p.add_argument("--series", choices=("best", "all"), help="series of a study to screen (best)")
    p.add_argument("--cubes", type=int, help="cubes per organ (as hepascreen screen; 200)")
    p.add_argument("--cube-mm", type=float, help="cube edge in mm (10)")
    p.add_argument("--seed", type=int, help="seed of cube sampling and bootstrap (0)")
    p.add_argument("--allow-contrast", action="store_true",
                   help="grade contrast-enhanced series by the ratio anyway")  # fmt: skip
    p.add_argument("--screen-workers", type=int, help="studies screened at once (2)")
    p.add_argument("--retention-hours", type=float,
                   help="delete received instances this long after their study finished "
                   "(72; 0 keeps them)")  # fmt: skip
    p.add_argument("--send-qc", action="store_true",
                   help="also send the QC picture (Secondary Capture, burned-in annotation)")  # fmt: skip
    p.add_argument(
        "--tls-cert", help="PEM certificate of the node (mutual TLS; with --tls-key, --tls-ca)"
    )
    p.add_argument("--tls-key", help="PEM private key of the node")
    p.add_argument("--tls-ca", help="PEM CA that peers' certificates must chain to")
    p.add_argument("--quiet", action="store_true", help="log to OUT/node/node.log only")
    return p


def listen(argv, prog: str = "hepascreen listen") -> int:
    from .config import load_config
    from .service import Node, node_paths, setup_logging

    args = listen_parser(prog).parse_args(argv)
    screen = {
        k: v
        for k, v in (("masks", args.masks), ("label_map", args.label_map), ("url", args.url),
                     ("device", args.device), ("series", args.series), ("send_qc", args.send_qc),
                     ("cubes", args.cubes), ("cube_mm", args.cube_mm), ("seed", args.seed),
                     ("allow_contrast", args.allow_contrast))
        if v is not None and v is not False
    }  # fmt: skip
    try:
        config = load_config(
            args.config, args.out, ae_title=args.ae_title, host=args.host, port=args.port,
            accept=args.accept, send_to=args.send_to, idle_seconds=args.idle_seconds,
            max_hold_seconds=args.max_hold_seconds, retention_hours=args.retention_hours,
            screen_workers=args.screen_workers,
            tls={"cert": args.tls_cert, "key": args.tls_key, "ca": args.tls_ca}
            if (args.tls_cert or args.tls_key or args.tls_ca) else None,
        )  # fmt: skip
        if screen:
            from dataclasses import replace

            config = replace(config, screen={**config.screen, **screen})
        if not config.accept:
            raise ConfigError(
                "no peer is accepted: give --accept CALLING_AE[@HOST] (or accept: in --config)"
            )
        if not config.send_to:
            print("warning: no --send-to: results stay in OUT", file=sys.stderr)
        setup_logging(node_paths(config.out_dir)["log"], stderr=not args.quiet)
        node = Node(config).start()
    except (ConfigError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    node.serve_forever()
    return 0


def node_main(argv, prog: str = "hepascreen node") -> int:
    p = argparse.ArgumentParser(prog=prog, description="Inspect a DICOM node.")
    sub = p.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("status", help="list the node's jobs")
    st.add_argument("-o", "--out", required=True)
    st.add_argument("--json", action="store_true", help="one JSON object per job")
    ck = sub.add_parser("check", help="C-ECHO every destination")
    _common(ck)
    args = p.parse_args(argv)
    try:
        if args.cmd == "status":
            from .service import node_status

            rows = node_status(args.out)
            if args.json:
                for r in rows:
                    print(json.dumps(r))
                return 0
            print(
                f"{'job':>5} {'state':<10} {'instances':>9} {'MB':>8} {'rows':>4} {'sent':>7}  since"
            )
            for r in rows:
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["state_since"]))
                print(f"{r['id']:>5} {r['state']:<10} {r['n_instances']:>9} {r['n_bytes'] / 1e6:>8.1f} "
                      f"{r['n_rows'] if r['n_rows'] is not None else '':>4} "
                      f"{r['n_sent']:>3}/{r['n_sends']:<3}  {since}  {r['note']}")  # fmt: skip
            return 0
        from .config import load_config
        from .service import check_destinations

        config = load_config(args.config, ".", ae_title=args.ae_title, send_to=args.send_to)
        if not config.send_to:
            raise ConfigError("no destination to check: give --send-to or --config")
        bad = 0
        for dest, outcome in check_destinations(config):
            print(f"{dest}: {'ok' if outcome.ok else 'FAILED: ' + outcome.reason}")
            bad += not outcome.ok
        return 1 if bad else 0
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2


__all__ = ["listen", "node_main"]
