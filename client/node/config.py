"""The node's configuration: one frozen value from a YAML file and/or command-line flags.

YAML keys (every one optional; flags given on the command line win)::

    ae_title: HEPASCREEN          # our AE title (called AE titles other than this are refused)
    host: 127.0.0.1               # address to bind (loopback unless told otherwise)
    port: 11112
    accept: [ORTHANC@127.0.0.1, SCANNER1]   # calling AE[@host] allowed to send; "*" = any AE
    send_to: [ORTHANC@127.0.0.1:4242]       # results destinations (C-STORE)
    idle_seconds: 30              # a study is ready this long after its last instance
    max_hold_seconds: 3600        # an aborted study waits this long for a re-send
    retry_seconds: [60, 300, 900, 1800, 3600, 7200, 14400]   # transient send failures
    retention_hours: 72           # received instances of finished studies kept this long
    screen_workers: 2             # studies screened at once
    screen: {masks: DIR, label_map: default, url: HOST:PORT, device: cpu, qc: true, series: best,
             cubes: 200, cube_mm: 10, seed: 0, allow_contrast: false}
    tls: {cert: node.crt, key: node.key, ca: ca.crt}   # mutual TLS, listening and sending

Imports nothing heavy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from client.core.errors import ConfigError

DEFAULT_RETRY_SECONDS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)
_AE_RE = re.compile(r"^[ -~]{1,16}$")


def _check_ae(ae: str, what: str) -> str:
    ae = str(ae).strip()
    if not _AE_RE.match(ae) or "\\" in ae:
        raise ConfigError(
            f"{what}: expected an AE title of 1 to 16 printable characters, got {ae!r}"
        )
    return ae


@dataclass(frozen=True)
class Peer:
    """A calling AE title allowed to send, optionally only from one host (``AE[@HOST]``)."""

    ae_title: str  # "*": any AE title
    host: str | None = None

    @classmethod
    def parse(cls, text: str) -> Peer:
        ae, _, host = str(text).partition("@")
        ae = ae.strip()
        return cls(ae if ae == "*" else _check_ae(ae, f"accept {text!r}"), host.strip() or None)

    def allows(self, ae_title: str, host: str) -> bool:
        return (self.ae_title in ("*", ae_title.strip())) and self.host in (None, host)

    def __str__(self) -> str:
        return self.ae_title + (f"@{self.host}" if self.host else "")


@dataclass(frozen=True)
class Destination:
    """Where results go: a DICOM AE (``AE@HOST:PORT``, C-STORE) or a DICOMweb URL (STOW-RS)."""

    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    url: str | None = None

    @classmethod
    def parse(cls, text: str) -> Destination:
        text = str(text).strip()
        if text.startswith(("http://", "https://")):
            return cls(url=text.rstrip("/"))
        m = re.match(r"^([^@]+)@([^:@]+):(\d+)$", text)
        if not m:
            raise ConfigError(
                f"send_to {text!r}: expected AE@HOST:PORT (C-STORE) or an http(s):// "
                "DICOMweb URL (STOW-RS)"
            )
        port = int(m.group(3))
        if not 0 < port < 65536:
            raise ConfigError(f"send_to {text!r}: port {port} outside 1..65535")
        return cls(_check_ae(m.group(1), f"send_to {text!r}"), m.group(2), port)

    @property
    def name(self) -> str:
        """The key under which sends to this destination are persisted."""
        return self.url if self.url else f"{self.ae_title}@{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class NodeConfig:
    """Everything :class:`client.node.Node` needs.

    Attributes
    ----------
    out_dir : Path
        OUT: results (as ``hepascreen screen`` writes them), ``node/`` (spool, job
        database, ``node.log``).
    ae_title, host, port : str, str, int
        The node's DICOM identity and listening address (loopback by default).
    accept : tuple of Peer
        Calling AE titles (and hosts) allowed to associate; empty refuses everyone.
    send_to : tuple of Destination
    idle_seconds : float
        A study is ready when no instance of it arrived for this long, no association
        that sent to it is open and the last one was released (not aborted).
    max_hold_seconds : float
        A study whose last association aborted waits this long for a re-send, then is
        screened with what arrived (the reader refuses a series with missing slices).
    retry_seconds : tuple of float
        Waits between attempts of a transiently failed send; after the last, the send fails.
    screen_workers : int
        Studies screened at once (each with its own thread; the segmenter and the
        results store are shared; two jobs of one study never run at once).
    retention_hours : float
        The received instances of a study (spool and job snapshots) are deleted this long
        after its last job finished (done or failed) with no job of the study open; the
        results in OUT stay. 0 keeps them forever.
    screen : dict
        ``masks``, ``label_map``, ``url``, ``device``, ``qc``, ``model_repository``,
        ``series`` (``best`` | ``all``, as ``hepascreen screen --series``), ``send_qc``
        (also send the QC picture as a Secondary Capture marked burned-in; off), and the
        measurement as ``hepascreen screen`` takes it: ``cubes``, ``cube_mm``, ``seed``,
        ``allow_contrast``.
    poll_seconds : float
        How often readiness and due sends are checked.
    tls : dict
        ``cert``, ``key`` (PEM: the node's certificate and key) and ``ca`` (PEM: peers'
        certificates must chain to it). Given, the node accepts TLS associations only and
        requires a client certificate (mutual TLS), and sends to DICOM destinations over
        TLS with its certificate, checking theirs (host name included).
    """

    out_dir: Path
    ae_title: str = "HEPASCREEN"
    host: str = "127.0.0.1"
    port: int = 11112
    accept: tuple = ()
    send_to: tuple = ()
    idle_seconds: float = 30.0
    max_hold_seconds: float = 3600.0
    retry_seconds: tuple = DEFAULT_RETRY_SECONDS
    retention_hours: float = 72.0
    screen_workers: int = 2
    screen: dict = field(default_factory=dict)
    poll_seconds: float = 0.5
    tls: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        _check_ae(self.ae_title, "ae_title")
        if not 0 <= int(self.port) < 65536:
            raise ConfigError(f"port: expected 0..65535, got {self.port}")
        if int(self.screen_workers) < 1:
            raise ConfigError(f"screen_workers must be >= 1, got {self.screen_workers}")
        if self.idle_seconds < 0 or self.max_hold_seconds < 0 or self.retention_hours < 0:
            raise ConfigError("idle_seconds, max_hold_seconds and retention_hours must be >= 0")
        if any(float(s) < 0 for s in self.retry_seconds):
            raise ConfigError(f"retry_seconds must be >= 0, got {list(self.retry_seconds)}")
        unknown = set(self.screen) - {
            "masks",
            "label_map",
            "url",
            "device",
            "qc",
            "model_repository",
            "series",
            "send_qc",
            "cubes",
            "cube_mm",
            "seed",
            "allow_contrast",
        }
        if unknown:
            raise ConfigError(f"screen: unknown keys {sorted(unknown)}")
        if self.tls:
            if set(self.tls) != {"cert", "key", "ca"}:
                raise ConfigError(f"tls: expected cert, key and ca, got {sorted(self.tls)}")
            for k, v in self.tls.items():
                if not Path(v).is_file():
                    raise ConfigError(f"tls {k}: {v}: no such file")

    def server_ssl_context(self):
        """TLS context of the receiver (None without ``tls``): client certificates required."""
        if not self.tls:
            return None
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.tls["cert"], self.tls["key"])
        ctx.load_verify_locations(self.tls["ca"])
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_ssl_context(self):
        """TLS context for sending (None without ``tls``): our certificate, theirs checked."""
        if not self.tls:
            return None
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(self.tls["ca"])
        ctx.load_cert_chain(self.tls["cert"], self.tls["key"])
        return ctx

    def allows(self, ae_title: str, host: str) -> bool:
        """True when the calling AE title (from ``host``) may associate."""
        return any(p.allows(ae_title, host) for p in self.accept)


_KEYS = {
    "ae_title", "host", "port", "accept", "send_to", "idle_seconds", "max_hold_seconds",
    "retry_seconds", "screen", "poll_seconds", "tls", "retention_hours", "screen_workers",
}  # fmt: skip


def load_config(path: Path | str | None, out_dir: Path | str, **overrides) -> NodeConfig:
    """The node's configuration from a YAML file (optional) with ``overrides`` on top.

    ``overrides`` with value None are ignored (flags not given); ``accept`` and
    ``send_to`` given as flags replace the file's lists.

    Raises
    ------
    ConfigError
        Unreadable file, unknown keys, malformed AE titles, peers or destinations.
    """
    data: dict = {}
    if path is not None:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the node configuration ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        unknown = set(data) - _KEYS
        if unknown:
            raise ConfigError(f"{path}: unknown settings {sorted(unknown)}; known: {sorted(_KEYS)}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    screen = dict(data.pop("screen", {}) or {})
    tls = {k: str(v) for k, v in (data.pop("tls", {}) or {}).items() if v}
    accept = tuple(Peer.parse(p) for p in data.pop("accept", ()) or ())
    send_to = tuple(Destination.parse(d) for d in data.pop("send_to", ()) or ())
    retry = tuple(float(s) for s in data.pop("retry_seconds", DEFAULT_RETRY_SECONDS))
    try:
        return NodeConfig(
            out_dir=Path(out_dir), accept=accept, send_to=send_to, retry_seconds=retry,
            screen=screen, tls=tls, **data,
        )  # fmt: skip
    except TypeError as exc:
        raise ConfigError(f"node configuration: {exc}") from exc


__all__ = ["Destination", "NodeConfig", "Peer", "load_config"]
