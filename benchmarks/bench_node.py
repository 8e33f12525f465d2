"""The DICOM node (``hepascreen listen``): receive throughput and end-to-end latency.

1. Receive throughput, durable before acknowledgement: a pynetdicom SCU (one
   association, instances read into memory first) C-STOREs a 512 x 512 CT series to
   (a) the node (spool: write + fsync + rename + folder fsync + SQLite commit before
   each acknowledgement) and (b) a same-run baseline SCP in its own process that
   acknowledges without storing anything (network and pynetdicom cost alone).
   Interleaved repeats; MB/s of DICOM files sent.
2. Latency from the last instance acknowledged to the SEG and SR in the PACS: a real
   Orthanc sends the real CT crop (30 slices) to the node (``--masks``, idle 1 s), the
   clock stops when Orthanc holds both; the idle wait is part of it and reported.
3. Ten studies sent by Orthanc at once: all answered, none mixed up (each SR's evidence
   is its own study's images), wall time.

Needs Orthanc (``bash scripts/install_orthanc.sh``) for 2 and 3. Uses the helpers of
``tests/test_node.py`` (the same Orthanc and node processes as the tests).

    .venv/bin/python -m benchmarks.bench_node [--repeats 3] [--studies 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, save_result  # noqa: E402

BASELINE_SCP = r"""
import sys, threading
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
ae = AE(ae_title="NULLSCP")
ae.maximum_pdu_size = 0
for cx in AllStoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax)
ae.start_server(("127.0.0.1", int(sys.argv[1])), block=True,
                evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000)])
"""


def big_series(folder: Path) -> list[Path]:
    """The real CT resampled in-plane to 512 x 512 (112 slices, 0.59 mm): file sizes as
    a clinical CT's."""
    from scipy.ndimage import zoom

    from client.reading.dicom import write_series
    from client.reading.io import read_scan
    from client.reading.scan import ScanVolume

    ct = read_scan(ROOT.parent / "shared" / "data" / "totalseg_example" / "ct.nii.gz")
    f = (1.0, 512 / ct.shape[1], 512 / ct.shape[2])
    arr = zoom(ct.array.astype(np.float32), f, order=1)
    spacing = (ct.spacing[0], ct.spacing[1] / f[1], ct.spacing[2] / f[2])
    scan = ScanVolume(arr, spacing, ct.origin, ct.direction, {})
    return write_series(scan, folder, shuffle_seed=3)


def send_all(datasets, port: int, called: str) -> float:
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title="ORTHANC")
    ae.maximum_pdu_size = 0
    ae.add_requested_context(CTImageStorage)
    t0 = time.perf_counter()
    a = ae.associate("127.0.0.1", port, ae_title=called)
    assert a.is_established, "association refused"
    for ds in datasets:
        st = a.send_c_store(ds)
        assert st.Status == 0, hex(st.Status)
    a.release()
    return time.perf_counter() - t0


def throughput(tmp: Path, repeats: int) -> dict:
    import pydicom

    from tests.test_node import NodeProc, free_port

    files = big_series(tmp / "big")
    datasets = [pydicom.dcmread(f) for f in files]
    mb = sum(f.stat().st_size for f in files) / 1e6
    base_port, node_port = free_port(), free_port()
    base = subprocess.Popen([sys.executable, "-c", BASELINE_SCP, str(base_port)])
    node = NodeProc(tmp / "out_tp", node_port, tmp, [], idle=3600).start()
    time.sleep(1.0)  # the baseline SCP has no readiness signal; one attempt follows anyway
    t_node, t_base = [], []
    try:
        for _ in range(repeats):
            t_base.append(send_all(datasets, base_port, "NULLSCP"))
            t_node.append(send_all(datasets, node_port, "HEPASCREEN"))
    finally:
        node.stop()
        base.terminate()
        base.wait()
    return {
        "instances": len(files),
        "megabytes": round(mb, 1),
        "node_seconds": [round(t, 3) for t in t_node],
        "baseline_seconds": [round(t, 3) for t in t_base],
        "node_mb_per_s": round(mb / statistics.median(t_node), 1),
        "baseline_mb_per_s": round(mb / statistics.median(t_base), 1),
        "node_instances_per_s": round(len(files) / statistics.median(t_node), 1),
    }


def latency_and_concurrency(tmp: Path, n_studies: int) -> dict:
    from tests.test_node import SR_CLASS, NodeProc, Orthanc, free_port, make_study, orthanc_binary

    if orthanc_binary() is None:
        return {"skipped": "Orthanc not installed (bash scripts/install_orthanc.sh)"}
    data = ROOT.parent / "shared" / "data"
    (tmp / "orthanc").mkdir()
    orthanc = Orthanc(tmp / "orthanc")
    studies = [
        make_study(data, tmp / "studies" / f"s{k}", seed=500 + k) for k in range(n_studies + 3)
    ]
    out: dict = {}
    try:
        port = free_port()
        orthanc.set_node(port)
        dest = [f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"]
        node = NodeProc(tmp / "out_lat", port, studies[0]["masks"], dest, idle=1.0).start()
        lat = []
        for st in studies[:3]:
            sid = orthanc.upload(st["files"])
            orthanc.send_to_node(sid)
            t0 = time.perf_counter()
            while not orthanc.has_results(st["study_uid"]):
                time.sleep(0.05)
            lat.append(time.perf_counter() - t0)
        out["latency_seconds"] = [round(x, 2) for x in lat]
        out["latency_median_s"] = round(statistics.median(lat), 2)
        out["idle_seconds"] = 1.0
        out["latency_note"] = (
            "last instance acknowledged -> SEG and SR both in Orthanc (REST polled every "
            "50 ms); includes the 1 s idle wait, --masks screening of a 30-slice real CT, "
            "QC picture, SEG/SR writing and two C-STOREs"
        )
        batch = studies[3:]
        ids = [orthanc.upload(st["files"]) for st in batch]
        t0 = time.perf_counter()
        threads = [threading.Thread(target=orthanc.send_to_node, args=(i,)) for i in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        mixed = 0
        for st in batch:
            while not orthanc.has_results(st["study_uid"]):
                time.sleep(0.1)
            got = orthanc.instances_by_class(st["study_uid"])
            sr = orthanc.dataset(got[SR_CLASS][0])
            ev = {str(i.ReferencedSOPInstanceUID)
                  for s in sr.CurrentRequestedProcedureEvidenceSequence
                  for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}  # fmt: skip
            mixed += not st["sop_uids"] <= ev
            mixed += (
                len(got[SR_CLASS]) != 1 or len(got.get("1.2.840.10008.5.1.4.1.1.66.4", [])) != 1
            )
        out["concurrent_studies"] = len(batch)
        out["concurrent_wall_s"] = round(time.perf_counter() - t0, 1)
        out["concurrent_all_answered_none_mixed"] = mixed == 0
        node.stop()
        log = (tmp / "out_lat" / "node" / "node.log").read_text()
        secrets = ["Doe^Jane", "PID-4711", "ACC-99"] + [st["study_uid"] for st in studies]
        out["identifiers_in_node_log"] = sum(s in log for s in secrets)
    finally:
        orthanc.close()
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--studies", type=int, default=10)
    args = p.parse_args(argv)
    import pydicom
    import pynetdicom

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        res = {
            "machine": machine_info(pynetdicom=pynetdicom.__version__, pydicom=pydicom.__version__),
            "receive": throughput(tmp, args.repeats),
            "pacs": latency_and_concurrency(tmp, args.studies),
        }
    save_result(res, ROOT / "benchmarks" / "results", "node.json")


if __name__ == "__main__":
    main()
