"""Finding the scans in the batch's INPUTs and naming them (DESIGN.md section 7).

One :class:`ScanSource` per NIfTI/NRRD/MHA file and per DICOM volume series.

* ``case_id`` = the path relative to its INPUT root, image extension dropped,
  ``/`` replaced by ``__``; an INPUT that is itself a file or a single-series
  folder is named by its own name (extension dropped). A DICOM series is named by
  the folder holding its files; when one folder holds several volume series
  (bone and soft-tissue reconstructions side by side) each gets
  ``__S<SeriesNumber>`` appended.
* Walking is recursive and sorted, so the result is deterministic. Files without
  an image extension are probed for DICOM (header only); other files
  (``DIRFILE``, notes, spreadsheets) are ignored and listed in ``ignored``.
* Non-volume DICOM series (localizers, dose screens, SEG, RTSTRUCT) are not
  scans: they are listed in ``skipped`` with the reason, not turned into error
  rows. A file with a ``.dcm`` suffix that is not readable DICOM IS a scan (it
  will produce an error row), since it claims to be one.
* The same file reached twice (two INPUTs overlapping) is kept once. Two
  different scans with the same ``case_id`` keep the first (in sorted order)
  and get ``-2``, ``-3``... appended to the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import _dicom
from .io import image_suffix, strip_image_suffix

IGNORED_SUFFIXES = {
    ".txt",
    ".md",
    ".csv",
    ".json",
    ".jsonl",
    ".xml",
    ".html",
    ".png",
    ".jpg",
    ".jpeg",
    ".pdf",
    ".log",
    ".yml",
    ".yaml",
    ".py",
    ".sh",
    ".zip",
    ".gz",
    ".tar",
}


@dataclass
class ScanSource:
    """Where one scan comes from."""

    case_id: str
    path: Path  # image file, DICOM folder, or single DICOM file
    kind: str  # "image" | "dicom"
    series_uid: str | None = None
    n_files: int = 1
    files: tuple[Path, ...] | None = None  # a DICOM series' own files, known from discovery

    def read(self, **kwargs):
        from .io import read_scan

        return read_scan(self.path, series_uid=self.series_uid, files=self.files, **kwargs)


@dataclass
class Discovery:
    sources: list[ScanSource] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # non-volume DICOM series
    ignored: list[str] = field(default_factory=list)  # files that are not scans
    missing: list[str] = field(default_factory=list)  # INPUTs that do not exist


def _case_from_rel(rel: Path) -> str:
    parts = list(rel.parts)
    if parts:
        parts[-1] = strip_image_suffix(parts[-1])
    return "__".join(p for p in parts if p not in ("", "."))


def _walk(root: Path):
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _discover_one(root: Path, out: Discovery, found: list[tuple[str, ScanSource]]) -> None:
    if root.is_file():
        if image_suffix(root):
            found.append(
                (str(root.resolve()), ScanSource(_case_from_rel(Path(root.name)), root, "image"))
            )
        else:
            name = root.name[: -len(root.suffix)] if root.suffix.lower() == ".dcm" else root.name
            found.append((str(root.resolve()), ScanSource(name, root, "dicom")))
        return
    # Grouped by (folder, SeriesInstanceUID): copies of one series kept in two
    # folders (e.g. the same slices in two transfer syntaxes) stay two scans.
    dicom: dict[tuple[Path, str], list[_dicom.SliceHeader]] = {}
    for f in _walk(root):
        if image_suffix(f):
            rel = f.relative_to(root)
            found.append((str(f.resolve()), ScanSource(_case_from_rel(rel), f, "image")))
            continue
        suffix = f.suffix.lower()
        if suffix in IGNORED_SUFFIXES:
            out.ignored.append(str(f))
            continue
        h = _dicom.read_header(f)
        if h is None:
            if suffix == ".dcm":  # claims to be DICOM: report it as a failed scan
                rel = f.relative_to(root)
                found.append(
                    (str(f.resolve()), ScanSource(_case_from_rel(rel.with_suffix("")), f, "dicom"))
                )
            else:
                out.ignored.append(str(f))
            continue
        h.ds = None  # keep headers small while walking big archives
        dicom.setdefault((f.parent, h.series_uid), []).append(h)
    volumes = []
    for (folder, uid), hs in dicom.items():
        why = _dicom.why_not_volume(hs)
        if why:
            entry = {"path": str(folder), "series_files": len(hs), "reason": why}
            if entry not in out.skipped:
                out.skipped.append(entry)
            continue
        volumes.append((folder, uid, hs))
    per_folder: dict[Path, int] = {}
    for folder, _, _ in volumes:
        per_folder[folder] = per_folder.get(folder, 0) + 1
    for folder, uid, hs in sorted(volumes, key=lambda v: (str(v[0]), v[2][0].series_number, v[1])):
        rel = folder.relative_to(root)
        if str(rel) in ("", "."):
            case = root.name  # the INPUT is itself the series (or study) folder
        else:
            case = _case_from_rel(rel)
        single_folder_series = len(volumes) == 1 and per_folder[folder] == 1
        if per_folder[folder] > 1:
            case = f"{case}__S{hs[0].series_number}"
        src = ScanSource(
            case,
            folder,
            "dicom",
            None if single_folder_series else uid,
            len(hs),
            files=tuple(h.path for h in hs),
        )
        found.append((f"{folder.resolve()}#{uid}", src))


def discover(inputs) -> Discovery:
    """Find every scan under ``inputs`` (files and folders), with unique case_ids."""
    out = Discovery()
    found: list[tuple[str, ScanSource]] = []
    for item in inputs:
        root = Path(item)
        if not root.exists():
            out.missing.append(str(root))
            continue
        _discover_one(root, out, found)
    seen_keys: set[str] = set()
    used: dict[str, int] = {}
    for key, src in found:
        if key in seen_keys:
            continue
        seen_keys.add(key)
        base = src.case_id or "scan"
        if base in used:
            n = used[base] + 1
            while f"{base}-{n}" in used:
                n += 1
            used[base] = n
            src.case_id = f"{base}-{n}"
        used.setdefault(src.case_id, 1)
        out.sources.append(src)
    return out
