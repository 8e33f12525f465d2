"""The receiver: a pynetdicom C-STORE SCP (and C-ECHO) that acknowledges a store only
after the instance is durable in the spool and recorded in the job database.

Refused at association time: a called AE title other than ours (A-ASSOCIATE-RJ
"called AE title not recognised"), a calling AE title or host not in ``accept``
("calling AE title not recognised"). No query/retrieve service is offered.

Accepted transfer syntaxes are those the reader decodes (SimpleITK's GDCM, as
``client.reading.dicom.read_slice`` uses it): uncompressed (implicit/explicit little endian,
explicit big endian), deflated, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000
and RLE. The store handler writes the bytes as received (no decoding); the reader
decodes at screening time.
"""

from __future__ import annotations

import io
import logging

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

ACCEPTED_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

# C-STORE statuses (PS3.4 B.2.3)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # the instance could not be made durable: the sender retries
CANNOT_UNDERSTAND = 0xC000  # no Study/Series/SOP Instance UID: nothing to file it under

log = logging.getLogger("hepascreen.node")


def make_receiver(config, spool, jobs):
    """An unstarted pynetdicom AE and its event handlers for ``config``.

    Returns ``(ae, handlers)``; start with
    ``ae.start_server((config.host, config.port), block=False, evt_handlers=handlers)``.
    """
    from pynetdicom import AE, evt
    from pynetdicom.presentation import AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=config.ae_title)
    ae.require_called_aet = True
    ae.maximum_associations = 16
    ae.network_timeout = 60
    ae.acse_timeout = 30
    ae.dimse_timeout = 120
    ae.maximum_pdu_size = 0  # unlimited: fewer, larger PDUs (throughput)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
    ae.add_supported_context(Verification)

    state: dict = {}  # id(assoc) -> {"id": assoc_id, "released": bool, "n": count}

    def on_requested(event):
        a = event.assoc
        calling = str(a.requestor.primitive.calling_ae_title).strip()  # not yet in .ae_title
        host = str(a.requestor.address)
        if not config.allows(calling, host):
            log.warning("association refused: calling AE %s not accepted (from this host)", calling)
            # As pynetdicom's own rejection path does: reject permanently ("calling AE
            # title not recognised"), then end the association once the PDU is sent.
            a.acse.send_reject(0x01, 0x01, 0x03)
            evt.trigger(a, evt.EVT_REJECTED, {})
            a.kill()

    def on_accepted(event):
        a = event.assoc
        calling = str(a.requestor.ae_title).strip()
        state[id(a)] = {"id": jobs.open_assoc(calling), "released": False, "n": 0, "ae": calling}

    def on_released(event):
        s = state.get(id(event.assoc))
        if s is not None:
            s["released"] = True

    def on_close(event):
        s = state.pop(id(event.assoc), None)
        if s is None:
            return
        jobs.end_assoc(s["id"], s["released"])
        log.info(
            "association %d from %s %s: %d instances",
            s["id"], s["ae"], "released" if s["released"] else "aborted", s["n"],
        )  # fmt: skip

    def on_store(event):
        s = state.get(id(event.assoc))
        if s is None:  # cannot happen after on_accepted; refuse rather than lose track
            return OUT_OF_RESOURCES
        try:
            data = event.encoded_dataset(include_meta=True)
            uids = _uids(data)
        except Exception:  # noqa: BLE001 - unreadable header
            log.warning("association %d: an instance with an unreadable header refused", s["id"])
            return CANNOT_UNDERSTAND
        if uids is None:
            log.warning(
                "association %d: an instance without study/series/instance UID refused", s["id"]
            )
            return CANNOT_UNDERSTAND
        try:
            skey, _, ikey, _ = spool.store(*uids, data)
            job, new = jobs.record_instance(s["id"], skey, ikey, len(data))
        except Exception as exc:  # noqa: BLE001 - disk full, database locked: sender retries
            log.error("association %d: instance not stored (%s)", s["id"], type(exc).__name__)
            return OUT_OF_RESOURCES
        s["n"] += 1
        if new:
            log.info("job %d: receiving (association %d from %s)", job, s["id"], s["ae"])
        return SUCCESS

    handlers = [
        (evt.EVT_REQUESTED, on_requested),
        (evt.EVT_ACCEPTED, on_accepted),
        (evt.EVT_RELEASED, on_released),
        (evt.EVT_CONN_CLOSE, on_close),
        (evt.EVT_C_STORE, on_store),
    ]
    return ae, handlers


def _uids(data: bytes):
    """(StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) of an encoded instance."""
    import pydicom

    ds = pydicom.dcmread(
        io.BytesIO(data), stop_before_pixels=True,
        specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
    )  # fmt: skip
    sop = str(ds.get("SOPInstanceUID", "") or "") or str(
        ds.file_meta.get("MediaStorageSOPInstanceUID", "") or ""
    )
    study, series = (
        str(ds.get("StudyInstanceUID", "") or ""),
        str(ds.get("SeriesInstanceUID", "") or ""),
    )
    return (study, series, sop) if study and series and sop else None


__all__ = ["ACCEPTED_TRANSFER_SYNTAXES", "make_receiver"]
