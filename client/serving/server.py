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

No orphans, whatever happens to the process that started the server: the server
is launched through a one-line shell that leaves a watcher in the server's
process group, blocked reading a pipe whose only writer is this process. When
this process ends in any way (SIGKILL and crashes included) the kernel closes
the pipe, the watcher reads end-of-file and SIGKILLs the whole group (server and
stubs). Temporary folders and shared-memory regions carry the owner's pid and
start time in their names, so the next start removes those of dead owners
(:func:`cleanup_stale`).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
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

from client.core.errors import InferenceError

_LIVE: weakref.WeakSet = weakref.WeakSet()
_SERIAL = itertools.count()
TMP_PREFIX = "hepascreen-triton-"
SHM_PREFIX = "hepascreen-shm-"
SHM_DIR = Path("/dev/shm")
# Two watchers stay in the server's process group, then the shell becomes tritonserver
# (same pid and group, stdin from /dev/null):
# 1. reads the pipe (the shell's stdin, kept as fd 3) until EOF, i.e. until the
#    owner is gone however it ended, then SIGKILLs the group;
# 2. polls the server's /proc state each second (shell builtins plus sleep) and
#    SIGKILLs the group once it has exited: its Python-backend stubs inherit the
#    server's sockets, so without this a dead server's connections stay open and
#    requests hang until their deadline instead of failing at once.
_LAUNCHER = (
    "exec 3<&0; "
    "( read _ <&3; kill -KILL 0 ) & "
    '( while read -r _ _ st _ </proc/$$/stat && [ "$st" != Z ]; do sleep 1; done; '
    "kill -KILL 0 ) 3<&- 2>/dev/null & "
    'exec "$@" 3<&- </dev/null'
)


def _start_time(pid: int) -> str | None:
    """Start time of process ``pid`` (clock ticks since boot), or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def owner_tag(pid: int | None = None) -> str:
    """``<pid>-<start time>`` of this process: unique even when pids are reused."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{_start_time(pid) or 0}"


def _owner_alive(tag: str) -> bool:
    try:
        pid, start = tag.split("-")[:2]
        return _start_time(int(pid)) == start
    except ValueError:
        return True  # not ours to judge


def _cmdlines_mentioning(text: str) -> bool:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().decode(errors="replace"):
                    return True
            except OSError:
                continue
    return False


def cleanup_stale(tmp_dir: str | Path | None = None, shm_dir: str | Path = SHM_DIR) -> dict:
    """Remove temporary folders and shared-memory files left by dead earlier runs.

    Names made by this module (and the ASCII aliases of :mod:`client.reading.headers`) hold
    the owner's ``pid-starttime``; they are removed
    when that process no longer exists. Older unnamed leftovers (folders of runs
    before this scheme) are removed when no running process refers to them and
    they are over two minutes old.

    Returns
    -------
    dict
        ``{"folders": [...], "shm": [...]}``, the names removed.
    """
    removed = {"folders": [], "shm": []}
    tmp = Path(tmp_dir or tempfile.gettempdir())
    now = time.time()
    from client.reading.headers import ALIAS_PREFIX

    entries = []
    for prefix in (TMP_PREFIX, ALIAS_PREFIX):
        try:
            entries += [(prefix, d) for d in tmp.glob(prefix + "*")]
        except OSError:
            pass
    for prefix, d in entries:
        rest = d.name[len(prefix) :]
        parts = rest.split("-")
        if len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit():
            stale = not _owner_alive(f"{parts[0]}-{parts[1]}")
        else:
            try:
                old = now - d.stat().st_mtime > 120
            except OSError:
                continue
            stale = old and not _cmdlines_mentioning(str(d))
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed["folders"].append(d.name)
    try:
        shm = list(Path(shm_dir).glob(SHM_PREFIX + "*"))
    except OSError:
        shm = []
    for f in shm:
        parts = f.name[len(SHM_PREFIX) :].split("-")
        if len(parts) >= 2 and not _owner_alive(f"{parts[0]}-{parts[1]}"):
            try:
                f.unlink()
                removed["shm"].append(f.name)
            except OSError:
                pass
    return removed


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


# Set while the main thread is inside ``interrupts_deferred()``: [depth, signal seen].
_DEFERRED = [0, False]


def _raise_interrupt(signum, frame):
    if _DEFERRED[0]:
        _DEFERRED[1] = True  # raised when the deferring block ends
        return
    raise KeyboardInterrupt


def install_interrupt_handlers() -> None:
    """Make Ctrl-C and SIGTERM raise KeyboardInterrupt in the main thread.

    So ``finally`` blocks stop the server on either signal, also when a parent
    process started us with SIGINT ignored (the child would inherit that). Inside
    :func:`interrupts_deferred` the signal waits for the block's end.
    """
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _raise_interrupt)
        signal.signal(signal.SIGTERM, _raise_interrupt)


@contextlib.contextmanager
def interrupts_deferred():
    """Run a block that must not be cut in two (a row written AND counted in run.json):
    Ctrl-C or SIGTERM arriving inside it raises KeyboardInterrupt when it ends."""
    _DEFERRED[0] += 1
    try:
        yield
    finally:
        _DEFERRED[0] -= 1
        if not _DEFERRED[0] and _DEFERRED[1]:
            _DEFERRED[1] = False
            raise KeyboardInterrupt


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


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still alive (zombies, which hold no files,
    do not count). Linux ``/proc``; elsewhere False (nothing to wait for)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            return True
    return False


class EmbeddedServer:
    """Run the bundled ``tritonserver`` on free loopback ports for the life of a ``with`` block.

    Parameters
    ----------
    model_repository : Path, optional
        Model repository (default: found by ``client.core.paths.model_repository``:
        ``HEPASCREEN_MODEL_REPOSITORY``, the installed package data, the checkout).
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
        if model_repository is None:  # the documented rule (client.core.paths): package data, env
            from client.core.paths import model_repository as _find_repository

            model_repository = _find_repository()
        self.model_repository = Path(model_repository).resolve()
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
        self._lifeline: int | None = None
        self.started_at: float | None = None
        self.last_log_tail = ""
        self.cleaned: dict = {}

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
        self.cleaned = cleanup_stale()
        tag = owner_tag()
        self._tmp = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{tag}-")
        backend_dir = build_backend_dir(Path(self._tmp) / "backends")
        if self._own_log:
            self.log_path = Path(self._tmp) / "tritonserver.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log_path, "ab")
        shm = f"{SHM_PREFIX}{tag}-{next(_SERIAL)}-"
        cmd = [*self.command(backend_dir), f"--backend-config=python,shm-region-prefix-name={shm}"]
        r, w = os.pipe()  # both ends non-inheritable; the child gets r explicitly
        try:
            self._proc = subprocess.Popen(
                ["/bin/sh", "-c", _LAUNCHER, "hepascreen-watch", *cmd],
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                stdin=r,
                env=self.environment(),
                start_new_session=True,  # own process group: stop() reaches the stubs too
            )
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        self._lifeline = w
        self.started_at = time.monotonic()
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

    def kill(self) -> None:
        """SIGKILL the server's whole process group now (a frozen server ignores SIGTERM)."""
        if self._proc is not None:
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.killpg(self._proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        self.stop(timeout_s=5.0)

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
            # Stubs may outlive the server by a moment; clear the group either way, and
            # wait (bounded) until none is left running: a SIGKILLed process holds its
            # files (the log) until it has actually died, which takes longer under load.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            deadline = time.monotonic() + 5.0
            while _group_running(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        if self._lifeline is not None:
            try:
                os.close(self._lifeline)  # the watcher (if still there) kills the group
            except OSError:
                pass
            self._lifeline = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        if self._tmp is not None:
            if self._own_log and self.log_path is not None:
                self.last_log_tail = self._log_tail()
            shutil.rmtree(self._tmp, ignore_errors=True)  # a temporary log goes with it
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
