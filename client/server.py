"""The bundled Triton server (from the ``nvidia-pytriton`` wheel), started and always stopped.

Facts this relies on (DESIGN.md section 4, seen on this machine type):
the Python backend needs a backend directory ``python/`` holding
``libtriton_python.so``, ``triton_python_backend_utils.py`` and the interpreter's
``triton_python_backend_stub``; ``LD_LIBRARY_PATH`` needs the wheel's
``nvidia_pytriton.libs`` and the running interpreter's libpython directory; the
stub finds its packages through the ``python3`` first on ``PATH`` (so the virtual
environment's ``bin`` goes first). Every endpoint binds to 127.0.0.1 unless told
otherwise; the server runs in its own process group, so stopping it kills the
Python-backend stubs too.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import weakref
from pathlib import Path

from .errors import InferenceError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository" / "cpu"

_LIVE: weakref.WeakSet = weakref.WeakSet()


def _pytriton_dirs() -> tuple[Path, Path]:
    """(pytriton/tritonserver dir, nvidia_pytriton.libs dir) from the installed wheel."""
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise InferenceError(
            "the bundled Triton server needs the nvidia-pytriton wheel: pip install 'nvidia-pytriton<0.8'"
        ) from exc
    base = Path(pytriton.__file__).resolve().parent
    server = base / "tritonserver"
    libs = base.parent / "nvidia_pytriton.libs"
    if not (server / "bin" / "tritonserver").exists():
        raise InferenceError(
            f"no tritonserver binary in {server / 'bin'}; reinstall nvidia-pytriton"
        )
    return server, libs


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def install_interrupt_handlers() -> None:
    """Make Ctrl-C and SIGTERM raise KeyboardInterrupt in the main thread.

    So ``finally`` blocks stop the server on either signal, also when a parent
    process started us with SIGINT ignored (the child would inherit that).
    """
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_interrupt)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def build_backend_dir(dest: Path) -> Path:
    """Lay out ``dest/python/`` as the Python backend expects; returns ``dest``."""
    server, _ = _pytriton_dirs()
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.exists():
        raise InferenceError(
            f"nvidia-pytriton ships no Python-backend stub for Python {ver} ({stub})"
        )
    py = dest / "python"
    py.mkdir(parents=True, exist_ok=True)
    for src in (
        server / "backends" / "python" / "libtriton_python.so",
        server / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ):
        link = py / src.name
        if not link.exists():
            os.symlink(src, link)
    return dest


class EmbeddedServer:
    """Run the bundled ``tritonserver`` on free loopback ports for the life of a ``with`` block.

    Parameters
    ----------
    model_repository : Path, optional
        Model repository (default: the project's ``model_repository/cpu``).
    log_path : Path, optional
        Server log file (default: a temporary file, removed on stop).
    host : str
        Address every endpoint binds to (127.0.0.1 unless told otherwise).
    http_port, grpc_port, metrics_port : int, optional
        Fixed ports; free ports are picked when omitted.
    startup_timeout_s : float
        Seconds to wait for the server and its models to be ready.
    extra_args : list of str, optional
        More ``tritonserver`` arguments.

    Raises
    ------
    InferenceError
        If the server exits early or is not ready in time (the message quotes its log).
    """

    def __init__(
        self,
        model_repository: Path | str | None = None,
        log_path: Path | str | None = None,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        startup_timeout_s: float = 60.0,
        extra_args: list[str] | None = None,
    ):
        self.model_repository = Path(model_repository or DEFAULT_REPOSITORY).resolve()
        self.host = host
        self.http_port = http_port or _free_port(host)
        self.grpc_port = grpc_port or _free_port(host)
        self.metrics_port = metrics_port or _free_port(host)
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args or [])
        self._tmp: str | None = None
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path else None
        self._proc: subprocess.Popen | None = None
        self._log_fh = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, backend_dir: Path) -> list[str]:
        server, _ = _pytriton_dirs()
        return [
            str(server / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--strict-readiness=true",
            "--exit-timeout-secs=10",
            "--log-verbose=0",
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        _, libs = _pytriton_dirs()
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(libs), libdir, env.get("LD_LIBRARY_PATH", "")) if p
        )
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        # The stub runs ONNX Runtime with its own threads; avoid oversubscription by OpenMP.
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def start(self) -> EmbeddedServer:
        """Start the server and wait until it and its models are ready."""
        if self.is_running():
            return self
        if not self.model_repository.is_dir():
            raise InferenceError(f"model repository not found: {self.model_repository}")
        self._tmp = tempfile.mkdtemp(prefix="hepascreen-triton-")
        backend_dir = build_backend_dir(Path(self._tmp) / "backends")
        if self.log_path is None:
            self.log_path = Path(self._tmp) / "tritonserver.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            self.command(backend_dir),
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.environment(),
            start_new_session=True,  # own process group: stop() reaches the stubs too
        )
        _LIVE.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _log_tail(self, n: int = 25) -> str:
        try:
            lines = Path(self.log_path).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        keep = [ln for ln in lines if "NVML" not in ln and "DCGM" not in ln]
        return "\n".join(keep[-n:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise InferenceError(
                    f"tritonserver exited with code {self._proc.returncode} during start-up "
                    f"(log {self.log_path}):\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1.0) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise InferenceError(
            f"tritonserver not ready after {self.startup_timeout_s:.0f} s (log {self.log_path}):\n"
            f"{self._log_tail()}"
        )

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the server and its process group (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        if proc is not None:
            # Stubs may outlive the server by a moment; clear the group either way.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        if self._tmp is not None:
            keep_log = not self._own_log
            if keep_log or self.log_path is None or not str(self.log_path).startswith(self._tmp):
                shutil.rmtree(self._tmp, ignore_errors=True)
            else:
                shutil.rmtree(Path(self._tmp) / "backends", ignore_errors=True)
            self._tmp = None
        _LIVE.discard(self)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):  # last resort; normal paths call stop()
        try:
            self.stop()
        except Exception:
            pass


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()
