"""Benchmark: reading a DICOM CT series, ``client.reading.io.read_scan`` against plain series readers.

``python benchmarks/bench_dicom.py [--slices 151] [--repeats 5] [--out benchmarks/results]``

Issue 23 item 4: a DICOM series read in at most 1.3x the time of a plain series reader
on the same files, every check of ``read_scan`` kept, measured on uncompressed and
compressed series. Series (512 x 512 x ``--slices`` phantom, 0.75 x 0.75 x 2 mm, files
in the page cache, random file names):

* ``uncompressed_int16``: signed 16-bit, implicit VR (as GDCM writes them);
* ``uncompressed_u12_intercept``: unsigned, 12 of 16 bits stored, rescale intercept
  -1024, explicit VR (the common vendor layout);
* ``rle``: the same, RLE Lossless compressed;
* ``jpegls``: the same, JPEG-LS lossless (needs pyjpegls, which highdicom installs; GDCM
  decodes it through one series reader in ``read_scan``).

Readers, each timed ``--repeats`` times interleaved (median CPU and wall seconds):
``read_bytes`` (the files' bytes, the floor), ``sitk_series`` (SimpleITK
``ImageSeriesReader`` on ``GetGDCMSeriesFileNames``: a plain series reader),
``pydicom_loop`` (``dcmread`` + ``pixel_array`` per file, sorted by position),
``read_scan`` (ours: series choice, geometry and decode checks, metadata) and
``read_scan_before`` (the same with the direct pixel read, the int16 assembly and the
decoding threads switched off: every slice parsed again and decoded by GDCM, as before
issue 23). Arrays are checked equal across readers. Writes ``results/dicom.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, save_result  # noqa: E402


def write_series(folder: Path, n_slices: int, layout: str) -> Path:
    """The phantom as a DICOM series in ``layout`` (written once, reused)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

    from client.reading.dicom import write_series as write
    from client.reading.scan import ScanVolume
    from training.phantoms import make_phantom

    out = folder / f"{layout}_{n_slices}"
    if out.is_dir() and len(list(out.iterdir())) == n_slices:
        return out
    p = make_phantom(5, shape=(n_slices, 512, 512), spacing=(2.0, 0.75, 0.75), grade="mild")
    hu = np.clip(np.asarray(p.hu), -1024, 3071).astype(np.int16)
    paths = write(ScanVolume(hu, p.spacing, (0.0, 0.0, 0.0), np.eye(3), metadata={}), out,
                  shuffle_seed=3)  # fmt: skip
    if layout == "uncompressed_int16":
        return out
    for f in paths:
        ds = pydicom.dcmread(str(f))
        stored = (ds.pixel_array.astype(np.int32) + 1024).astype("<u2")
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if layout == "rle":
            ds.compress(RLELossless, stored)
        elif layout == "jpegls":
            ds.compress(JPEGLSLossless, stored)  # needs pyjpegls (installed with highdicom)
        ds.save_as(str(f), enforce_file_format=True)
    return out


@contextmanager
def before_issue_23():
    """``read_scan`` as before issue 23: GDCM parses and decodes every slice, one at a
    time, and the volume is stacked as int32 then narrowed."""
    from client.reading import dicom as _dicom

    def old_stack(slices):
        vol = np.stack(slices).astype(
            np.float32 if any(s.dtype.kind == "f" for s in slices) else np.int32
        )
        if vol.dtype.kind == "i" and vol.min() >= -32768 and vol.max() <= 32767:
            vol = vol.astype(np.int16)  # (load_series narrowed it here)
        return vol

    saved = (_dicom.raw_pixel_layout, _dicom._stack_slices, _dicom.GDCM_THREADS)
    _dicom.raw_pixel_layout, _dicom._stack_slices, _dicom.GDCM_THREADS = (
        lambda h: None, old_stack, 1)  # fmt: skip
    try:
        yield
    finally:
        _dicom.raw_pixel_layout, _dicom._stack_slices, _dicom.GDCM_THREADS = saved


def readers(folder: Path) -> dict:
    import pydicom
    import SimpleITK as sitk

    from client.reading.io import read_scan

    files = sorted(str(p) for p in folder.iterdir())

    def read_bytes():
        return sum(len(Path(f).read_bytes()) for f in files)

    def sitk_series():
        r = sitk.ImageSeriesReader()
        r.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
        return sitk.GetArrayFromImage(r.Execute())

    def pydicom_loop():
        ds = [pydicom.dcmread(f) for f in files]
        ds.sort(key=lambda d: float(d.ImagePositionPatient[2]))
        return np.stack([d.pixel_array.astype(np.int32) * int(d.RescaleSlope)
                         + int(d.RescaleIntercept) for d in ds])  # fmt: skip

    def ours():
        return read_scan(folder).array

    def before():
        with before_issue_23():
            return read_scan(folder).array

    return {"read_bytes": read_bytes, "sitk_series": sitk_series, "pydicom_loop": pydicom_loop,
            "read_scan": ours, "read_scan_before": before}  # fmt: skip


def measure(folder: Path, repeats: int) -> dict:
    fns = readers(folder)
    cpu = {k: [] for k in fns}
    wall = {k: [] for k in fns}
    out = {}
    for k, fn in fns.items():  # warm-up: page cache, imports
        out[k] = fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            cpu[k].append(time.process_time() - c)
            wall[k].append(time.perf_counter() - w)
    med = lambda v: round(float(np.median(v)), 4)  # noqa: E731
    res = {"files": len(list(folder.iterdir())),
           "bytes": sum(f.stat().st_size for f in folder.iterdir()),
           "cpu_s": {k: med(v) for k, v in cpu.items()},
           "wall_s": {k: med(v) for k, v in wall.items()}}  # fmt: skip
    ref = out["read_scan"]
    res["identical"] = {
        "read_scan_before": bool(np.array_equal(out["read_scan_before"], ref)),
        "sitk_series": bool(np.array_equal(out["sitk_series"].astype(np.int32), ref)),
        "pydicom_loop": bool(np.array_equal(out["pydicom_loop"], ref)),
        "dtype": str(ref.dtype),
    }
    for basis in ("cpu_s", "wall_s"):
        t = res[basis]
        plain = min(t["sitk_series"], t["pydicom_loop"])
        res[f"ratio_{basis[:-2]}"] = {
            "read_scan_vs_sitk_series": round(t["read_scan"] / t["sitk_series"], 2),
            "read_scan_vs_pydicom_loop": round(t["read_scan"] / t["pydicom_loop"], 2),
            "read_scan_vs_faster_plain_reader": round(t["read_scan"] / plain, 2),
            "read_scan_before_vs_faster_plain_reader": round(t["read_scan_before"] / plain, 2),
            "speedup_vs_before": round(t["read_scan_before"] / t["read_scan"], 2),
        }
    return res


def main(argv=None) -> int:
    import pydicom
    import SimpleITK as sitk

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=151)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path("/tmp/hepascreen_bench_dicom"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--layouts", nargs="+",
                    default=["uncompressed_int16", "uncompressed_u12_intercept", "rle", "jpegls"])  # fmt: skip
    args = ap.parse_args(argv)
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
    res = {
        "machine": {
            **machine_info(),
            "numpy": np.__version__,
            "pydicom": pydicom.__version__,
            "SimpleITK": sitk.Version_VersionString(),
            "load_average_at_start": list(os.getloadavg()),
        },  # fmt: skip
        "what": "512 x 512 x N phantom series, files in the page cache; CPU and wall seconds, "
        "median of interleaved repeats; SimpleITK on 1 thread; read_scan reads plain slices "
        "straight from the files, decodes RLE with pydicom and the JPEG family with one GDCM "
        "series reader",
        "series": {},
    }
    for layout in args.layouts:
        folder = write_series(args.work, args.slices, layout)
        reps = args.repeats
        res["series"][layout] = measure(folder, reps)
        print(layout, res["series"][layout]["cpu_s"], res["series"][layout]["ratio_cpu"],
              file=sys.stderr)  # fmt: skip
    save_result(res, args.out, "dicom.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
