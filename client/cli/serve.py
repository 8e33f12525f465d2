"""Run the bundled Triton server in the foreground: ``python -m client.cli.serve``.

Prints the gRPC/HTTP/metrics addresses, then serves until Ctrl-C (and always
stops the server and its Python-backend processes). Binds 127.0.0.1 unless
``--host`` says otherwise. Point ``python -m client.batch ... --url HOST:PORT`` at it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from client.core.errors import ConfigError, InferenceError
from client.core.paths import model_repository
from client.serving.server import EmbeddedServer, install_interrupt_handlers


def main(argv=None, prog: str = "python -m client.cli.serve") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model-repository",
        type=Path,
        default=None,
        help="default: $HEPASCREEN_MODEL_REPOSITORY, the installed copy, or the checkout's",
    )
    ap.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="gpu: ONNX Runtime's CUDA provider (configs/gpu.pbtxt; needs onnxruntime-gpu)",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--grpc-port", type=int, default=None)
    ap.add_argument("--http-port", type=int, default=None)
    ap.add_argument("--metrics-port", type=int, default=None)
    ap.add_argument("--log", type=Path, default=Path("tritonserver.log"), help="server log file")
    args = ap.parse_args(argv)
    try:
        args.model_repository = model_repository(args.model_repository)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    srv = EmbeddedServer(
        args.model_repository,
        log_path=args.log,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        extra_args=["--model-config-name=gpu"] if args.device == "gpu" else None,
    )
    install_interrupt_handlers()  # Ctrl-C and SIGTERM end the loop and stop the server
    try:
        srv.start()
        print(f"Triton serving {args.model_repository}", flush=True)
        print(f"  gRPC     {srv.grpc_url}", flush=True)
        print(f"  HTTP     {srv.http_url}", flush=True)
        print(f"  metrics  {srv.host}:{srv.metrics_port}", flush=True)
        print(f"  log      {srv.log_path}", flush=True)
        print("Ctrl-C to stop.", flush=True)
        while srv.is_running():
            time.sleep(0.5)
        print(f"server exited (log {srv.log_path})", file=sys.stderr)
        return 1
    except InferenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        srv.stop()


if __name__ == "__main__":
    raise SystemExit(main())
