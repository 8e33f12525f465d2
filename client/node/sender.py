"""Results to their destinations: C-STORE to a DICOM AE or STOW-RS to a DICOMweb
service, with each failure classified.

``transient`` failures (connection refused or dropped, timeouts, association rejected
transiently, "out of resources" / processing-failure statuses) are retried on the
node's persisted schedule; ``permanent`` ones (association rejected permanently, SOP
class or transfer syntax refused, "cannot understand", not authorised, ...) are not:
sending the same object again would be refused again (MONAI Informatics Gateway
#200/#153: an export retried forever).

STOW-RS success is read from the response, not assumed from the HTTP status
(dicomweb-client #42: a 200 that stored nothing): an instance counts as sent only when
its SOP Instance UID is in the response's ReferencedSOPSequence (0008,1199); in the
FailedSOPSequence (0008,1198) its FailureReason decides (A7xx transient, else
permanent); in neither, it is retried. HTTP 408/429/5xx and connection errors are
transient; other 4xx permanent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("hepascreen.node")

# C-STORE status codes that succeed (success and warnings, PS3.4 B.2.3).
_SUCCESS = {0x0000, 0x0001, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class SendOutcome:
    ok: bool
    transient: bool = False
    reason: str = ""


def _transient_status(code: int) -> bool:
    # A7xx out of resources, 0110 processing failure, 0213 resource limitation,
    # 0212 / 0211 mistyped argument / unrecognised operation are not transient.
    return (code & 0xFF00) == 0xA700 or code in (0x0110, 0x0213)


def _storage_contexts():
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom.sop_class import (
        Comprehensive3DSRStorage,
        SecondaryCaptureImageStorage,
        SegmentationStorage,
    )

    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    return [
        (c, syntaxes)
        for c in (SegmentationStorage, Comprehensive3DSRStorage, SecondaryCaptureImageStorage)
    ]


def _associate(dest, calling_ae: str, contexts, timeout: float, tls=None):
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.dimse_timeout = max(timeout, 60)
    for sop, syntaxes in contexts:
        if syntaxes:
            ae.add_requested_context(sop, syntaxes)
        else:
            ae.add_requested_context(sop)
    tls_args = (tls, dest.host) if tls is not None else None
    return ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)


def _refused(assoc) -> SendOutcome:
    if assoc.is_rejected:
        result = getattr(getattr(assoc, "acceptor", None), "primitive", None)
        code = getattr(result, "result", None)
        transient = code == 0x02
        return SendOutcome(
            False, transient, f"association rejected ({'transient' if transient else 'permanent'})"
        )
    return SendOutcome(False, True, "no association (connection refused, dropped or timed out)")


def store_files(
    dest, paths: list, calling_ae: str, timeout: float = 30.0, tls=None
) -> list[SendOutcome]:
    """C-STORE ``paths`` to ``dest`` in one association (over TLS with the ``tls``
    ssl.SSLContext); one outcome per path."""
    try:
        assoc = _associate(dest, calling_ae, _storage_contexts(), timeout, tls)
    except Exception as exc:  # noqa: BLE001 - socket errors: transient
        return [SendOutcome(False, True, f"no association ({type(exc).__name__})")] * len(paths)
    if not assoc.is_established:
        return [_refused(assoc)] * len(paths)
    out: list[SendOutcome] = []
    try:
        for p in paths:
            try:
                status = assoc.send_c_store(str(p))
            except ValueError as exc:  # no accepted presentation context for the SOP class
                out.append(SendOutcome(False, False, f"refused by the destination ({exc})"[:200]))
                continue
            except FileNotFoundError:
                out.append(SendOutcome(False, False, "the output file is gone"))
                continue
            except Exception as exc:  # noqa: BLE001 - connection lost mid-send
                out.append(SendOutcome(False, True, f"send interrupted ({type(exc).__name__})"))
                continue
            code = int(status.Status) if status is not None and "Status" in status else None
            if code is None:
                out.append(SendOutcome(False, True, "no response (connection lost or timed out)"))
            elif code in _SUCCESS:
                out.append(SendOutcome(True))
            else:
                t = _transient_status(code)
                out.append(SendOutcome(False, t, f"C-STORE status 0x{code:04X}"))
            if not assoc.is_established:  # the peer aborted: the rest is transient
                out += [SendOutcome(False, True, "association lost")] * (len(paths) - len(out))
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def _sop_uid(path) -> str:
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    return str(ds.SOPInstanceUID)


def _dicom_json_seq(body: dict, tag: str) -> list[dict]:
    el = body.get(tag) or {}
    return list(el.get("Value") or [])


def _first(item: dict, tag: str):
    v = (item.get(tag) or {}).get("Value") or [None]
    return v[0]


def stow_files(dest, paths: list, timeout: float = 60.0) -> list[SendOutcome]:
    """STOW-RS ``paths`` to ``dest.url`` (``POST {url}/studies``) in one request; one
    outcome per path, read from the response body."""
    import uuid

    import requests

    boundary = f"hepascreen-{uuid.uuid4().hex}"
    try:
        uids = [_sop_uid(p) for p in paths]
        parts = []
        for p in paths:
            parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            parts.append(open(p, "rb").read())
            parts.append(b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
    except FileNotFoundError:
        return [SendOutcome(False, False, "the output file is gone")] * len(paths)
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    try:
        r = requests.post(
            dest.url + "/studies", data=b"".join(parts), headers=headers, timeout=timeout
        )
    except requests.RequestException as exc:
        return [SendOutcome(False, True, f"no response ({type(exc).__name__})")] * len(paths)
    code = r.status_code
    if code in (408, 429) or code >= 500:
        return [SendOutcome(False, True, f"HTTP {code}")] * len(paths)
    try:
        body = r.json() if r.content else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    stored = {str(_first(i, "00081155")) for i in _dicom_json_seq(body, "00081199")}
    failed = {
        str(_first(i, "00081155")): _first(i, "00081197") for i in _dicom_json_seq(body, "00081198")
    }
    out = []
    for uid in uids:
        if uid in stored:
            out.append(SendOutcome(True))
        elif uid in failed:
            reason = failed[uid]
            t = isinstance(reason, int) and (reason & 0xFF00) == 0xA700
            out.append(SendOutcome(False, t, f"STOW-RS failure reason {reason} (HTTP {code})"))
        elif 400 <= code < 500:
            out.append(SendOutcome(False, False, f"HTTP {code}"))
        else:
            out.append(SendOutcome(False, True, f"HTTP {code} but not confirmed in the response"))
    return out


def echo(dest, calling_ae: str, timeout: float = 10.0, tls=None) -> SendOutcome:
    """C-ECHO ``dest``, or for a DICOMweb URL a QIDO-RS query (``hepascreen node check``)."""
    if dest.url:
        import requests

        try:
            r = requests.get(dest.url + "/studies", params={"limit": 1}, timeout=timeout)
        except requests.RequestException as exc:
            return SendOutcome(False, True, f"no response ({type(exc).__name__})")
        return SendOutcome(r.ok, r.status_code >= 500, "" if r.ok else f"HTTP {r.status_code}")
    from pynetdicom.sop_class import Verification

    try:
        assoc = _associate(dest, calling_ae, [(Verification, None)], timeout, tls)
    except Exception as exc:  # noqa: BLE001
        return SendOutcome(False, True, f"no association ({type(exc).__name__})")
    if not assoc.is_established:
        return _refused(assoc)
    try:
        status = assoc.send_c_echo()
        code = int(status.Status) if status is not None and "Status" in status else None
    finally:
        if assoc.is_established:
            assoc.release()
    return SendOutcome(code == 0, code is None, "" if code == 0 else f"C-ECHO status {code}")


__all__ = ["SendOutcome", "echo", "stow_files", "store_files"]
