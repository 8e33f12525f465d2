"""Finding the scans in the batch's INPUTs and naming them (DESIGN.md section 7).

One :class:`ScanSource` per NIfTI/NRRD/MHA file and per DICOM volume series.
Every path under an INPUT ends up as a source, in ``skipped`` (non-volume DICOM
series, with the reason) or in ``ignored`` (with the reason): nothing vanishes.

* ``case_id`` = the path relative to its INPUT root, image extension dropped,
  ``/`` replaced by ``__``; an INPUT that is itself a file or a single-series
  folder is named by its own name (extension dropped). A DICOM series is named by
  the folder holding its files; when one folder holds several volume series
  (bone and soft-tissue reconstructions side by side) each gets
  ``__S<SeriesNumber>`` appended. A case_id longer than :data:`MAX_CASE_ID_BYTES`
  (UTF-8) is cut and ends in ``~`` + 12 hex digits of a hash of the whole id, so
  it stays unique, deterministic and usable as a file name.
* Walking is recursive and sorted, so the result is deterministic. Symlinks to
  files and folders are followed; a folder reached again (a symlink loop, or the
  same folder through two links) is walked once and the other path is listed in
  ``ignored``. Hidden names (starting with ``.``), unreadable files and folders,
  names that are not valid UTF-8, broken links and special files are listed in
  ``ignored`` with the reason. Files without an image extension are probed for
  DICOM (header only); other files are listed in ``ignored``.
* Non-volume DICOM series (localizers, dose screens, SEG, RTSTRUCT) are not
  scans: they are listed in ``skipped`` with the reason. A file with a ``.dcm``
  suffix that is not readable DICOM IS a scan (it will produce an error row),
  since it claims to be one.
* The same file reached twice (two INPUTs overlapping) is kept once. Two
  different scans with the same ``case_id``: the first (in sorted order) keeps
  it, the others get ``-<8 hex digits of a hash of their path>``, so adding a
  file never renames other scans. ``pins`` (``source_id -> case_id``, from an
  earlier run in the same OUT) keep case_ids stable across ``--resume``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from client.core.errors import ScanReadError
from client.reading import dicom as _dicom
from client.reading.io import image_suffix, strip_image_suffix

MAX_CASE_ID_BYTES = 200  # leaves room for ".seg.dcm" etc. under the 255-byte name limit

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


def _hash(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:n]


def printable(path) -> str:
    """``path`` as text that is valid UTF-8 (undecodable bytes shown as ``\\xNN``)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


@dataclass
class ScanSource:
    """Where one scan comes from.

    ``key`` identifies the source for de-duplication and resume (resolved path, plus
    the series UID for one series of a multi-series folder); ``source_id`` is its
    hash (rows carry it, never the UID itself).
    """

    case_id: str
    path: Path  # image file, DICOM folder, or single DICOM file
    kind: str  # "image" | "dicom"
    series_uid: str | None = None
    n_files: int = 1
    files: tuple[Path, ...] | None = None  # a DICOM series' own files, known from discovery
    key: str = ""
    # Known from discovery for DICOM series: the study they belong to and what the
    # header says of contrast (client.pipeline.study orders a study's series by it). Never
    # written out: rows carry study_id, a hash.
    study_uid: str | None = None
    series_description: str = ""
    contrast_agent: str = ""
    series_number: int = 0

    def __post_init__(self):
        if not self.key:
            self.key = str(Path(self.path).resolve())

    @property
    def source_id(self) -> str:
        """16 hex digits identifying the source (stable when the file's content changes)."""
        return _hash(self.key, 16)

    @property
    def study_id(self) -> str:
        """16 hex digits identifying the scan's study: a hash of the DICOM
        StudyInstanceUID, or the ``source_id`` of a scan without one (an image file is a
        study of its own)."""
        return _hash("study\n" + self.study_uid, 16) if self.study_uid else self.source_id

    def fingerprint(self) -> str:
        """16 hex digits of ``source_id`` plus each file's size and modification time.

        A scan whose files changed since its row was written gets a new fingerprint
        and is screened again on ``--resume``.
        """
        parts = [self.key]
        for f in self.files or (self.path,):
            try:
                st = os.stat(f)
                parts.append(f"{Path(f).name}:{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                parts.append(f"{Path(f).name}:missing")
        return _hash("\n".join(parts), 16)

    def read(self, **kwargs):
        from client.reading.io import read_scan

        return read_scan(self.path, series_uid=self.series_uid, files=self.files, **kwargs)


@dataclass
class Discovery:
    sources: list[ScanSource] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # non-volume DICOM series
    ignored: list[dict] = field(default_factory=list)  # {"path", "reason"}: not scans
    missing: list[str] = field(default_factory=list)  # INPUTs that do not exist

    def ignore(self, path, reason: str) -> None:
        self.ignored.append({"path": printable(path), "reason": reason})


def shorten_case_id(case_id: str, limit: int = MAX_CASE_ID_BYTES) -> str:
    """``case_id`` cut to ``limit`` UTF-8 bytes with ``~<12 hex of its hash>`` (unchanged when short)."""
    raw = case_id.encode("utf-8")
    if len(raw) <= limit:
        return case_id
    tail = "~" + _hash(case_id, 12)
    head = raw[: limit - len(tail)].decode("utf-8", "ignore")
    return head + tail


def _case_from_rel(rel: Path) -> str:
    parts = list(rel.parts)
    if parts:
        parts[-1] = strip_image_suffix(parts[-1])
    return "__".join(p for p in parts if p not in ("", "."))


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _walk(root: Path, out: Discovery, visited: dict, excluded: dict):
    """Yield the regular files under ``root`` (sorted, links followed, each folder once)."""
    try:
        st = os.stat(root)
    except OSError as exc:
        out.ignore(root, f"cannot open folder ({exc.strerror})")
        return
    visited.setdefault((st.st_dev, st.st_ino), root)
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except PermissionError:
        out.ignore(root, "permission denied: folder not readable")
        return
    except OSError as exc:
        out.ignore(root, f"cannot list folder ({exc.strerror})")
        return
    for e in entries:
        p = Path(e.path)
        if not _utf8(e.name):
            out.ignore(p, "name is not valid UTF-8: rename it to be screened")
            continue
        if e.name.startswith("."):
            out.ignore(p, "hidden (name starts with '.')")
            continue
        try:
            st = os.stat(p)  # follows symlinks
        except OSError as exc:
            why = "symlink loop" if exc.errno == 40 else f"broken symlink ({exc.strerror})"
            out.ignore(p, why if e.is_symlink() else f"cannot stat ({exc.strerror})")
            continue
        if stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in excluded:
                out.ignore(p, "the output folder of this run")
                continue
            first = visited.get((st.st_dev, st.st_ino))
            if first is not None:
                out.ignore(
                    p,
                    f"folder already searched as {printable(first)} (symlink loop or second link)",
                )
                continue
            visited[(st.st_dev, st.st_ino)] = p
            if image_suffix(e.name) and not any(os.scandir(p)):
                # an empty folder named like an image is almost always a failed copy
                out.ignore(p, f"a folder named like an image file ({image_suffix(e.name)}) "
                           "and empty; expected a file")  # fmt: skip
                continue
            yield from _walk(p, out, visited, excluded)
        elif stat.S_ISREG(st.st_mode):
            if not os.access(p, os.R_OK):
                out.ignore(p, "permission denied: file not readable")
                continue
            yield p
        else:
            out.ignore(p, "not a regular file (device, socket or pipe)")


def _discover_one(root: Path, out: Discovery, found: list, excluded: dict) -> None:
    if root.is_file():
        if not os.access(root, os.R_OK):
            out.ignore(root, "permission denied: file not readable")
            return
        found.append((str(root.resolve()), source_for_file(root)))
        return
    # Grouped by (folder, SeriesInstanceUID): copies of one series kept in two
    # folders (e.g. the same slices in two transfer syntaxes) stay two scans.
    dicom: dict[tuple[Path, str], list[_dicom.SliceHeader]] = {}
    for f in _walk(root, out, {}, excluded):
        if image_suffix(f):
            rel = f.relative_to(root)
            found.append((str(f.resolve()), ScanSource(_case_from_rel(rel), f, "image")))
            continue
        suffix = f.suffix.lower()
        if suffix in IGNORED_SUFFIXES:
            out.ignore(f, f"not a scan ({suffix} file)")
            continue
        h = _dicom.read_header(f)
        if h is None:
            if suffix == ".dcm":  # claims to be DICOM: report it as a failed scan
                rel = f.relative_to(root)
                found.append(
                    (str(f.resolve()), ScanSource(_case_from_rel(rel.with_suffix("")), f, "dicom"))
                )
            else:
                out.ignore(f, "not DICOM and no image extension")
            continue
        h.ds = None  # keep headers small while walking big archives
        dicom.setdefault((f.parent, h.series_uid), []).append(h)
    volumes = []
    for (folder, uid), hs in dicom.items():
        why = _dicom.why_not_volume(hs)
        if why:
            where = hs[0].path if len(hs) == 1 else folder  # a lone file is named itself
            entry = {"path": printable(where), "series_files": len(hs), "reason": why}
            if entry not in out.skipped:
                out.skipped.append(entry)
            continue
        volumes.append((folder, uid, hs))
    per_folder: dict[Path, int] = {}
    for folder, _, _ in volumes:
        per_folder[folder] = per_folder.get(folder, 0) + 1
    for folder, uid, hs in sorted(volumes, key=lambda v: (str(v[0]), v[2][0].series_number, v[1])):
        if len(hs) == 1 and per_folder[folder] > 1:
            # One file of its own series beside others (single DICOM files collected in a
            # folder): named and read as that file, so its error names the file.
            f = hs[0].path
            rel = f.relative_to(root)
            case = _case_from_rel(rel.with_suffix("") if f.suffix.lower() == ".dcm" else rel)
            found.append((str(f.resolve()), ScanSource(case, f, "dicom")))
            continue
        rel = folder.relative_to(root)
        if str(rel) in ("", "."):
            case = root.name  # the INPUT is itself the series (or study) folder
        else:
            case = _case_from_rel(rel)
        single_folder_series = len(volumes) == 1 and per_folder[folder] == 1
        if per_folder[folder] > 1:
            case = f"{case}__S{hs[0].series_number}"
        key = f"{folder.resolve()}#{uid}"
        src = ScanSource(
            case,
            folder,
            "dicom",
            None if single_folder_series else uid,
            len(hs),
            files=tuple(h.path for h in hs),
            key=key,
            study_uid=hs[0].study_uid or None,
            series_description=hs[0].description,
            contrast_agent=hs[0].contrast_agent,
            series_number=hs[0].series_number,
        )
        found.append((key, src))


def source_for_file(path: Path) -> ScanSource:
    """The source of one file given directly (named by its own name)."""
    path = Path(path)
    if image_suffix(path):
        return ScanSource(_case_from_rel(Path(path.name)), path, "image")
    name = path.name[: -len(path.suffix)] if path.suffix.lower() == ".dcm" else path.name
    return ScanSource(name, path, "dicom")


def source_for_path(path: Path | str) -> ScanSource:
    """The one scan of a file or series folder (library use; the first scan of a study folder).

    Raises
    ------
    ScanReadError
        When ``path`` does not exist or holds no scan (with the reasons found).
    """
    d = discover([path])
    if d.sources:
        return d.sources[0]
    why = [f"{x['path']}: {x['reason']}" for x in d.skipped + d.ignored][:5]
    raise ScanReadError(
        f"{path}: " + ("no such file or folder" if d.missing else "no scan found")
        + (" (" + "; ".join(why) + ")" if why else "")
    )  # fmt: skip


def discover(inputs, pins: dict[str, str] | None = None, exclude=()) -> Discovery:
    """Find every scan under ``inputs`` (files and folders), with unique case_ids.

    Parameters
    ----------
    inputs : iterable of str or Path
    pins : dict, optional
        ``source_id -> case_id`` from an earlier run: those sources keep their case_id.
    exclude : iterable of paths
        Folders not to search (the run's OUT when it lies inside an INPUT).

    Returns
    -------
    Discovery
    """
    out = Discovery()
    found: list[tuple[str, ScanSource]] = []
    excluded = {}
    for p in exclude:
        try:
            st = os.stat(p)
            excluded[(st.st_dev, st.st_ino)] = p
        except OSError:
            pass
    for item in inputs:
        root = Path(item)
        if not _utf8(str(root)):
            out.ignore(root, "name is not valid UTF-8: rename it to be screened")
            continue
        if not root.exists():
            out.missing.append(str(root))
            continue
        _discover_one(root, out, found, excluded)
    firsts: dict[str, ScanSource] = {}
    unique: list[ScanSource] = []
    for key, src in found:
        if key in firsts:
            out.ignore(src.path, f"same scan as {printable(firsts[key].path)} (reached twice)")
            continue
        firsts[key] = src
        src.case_id = shorten_case_id(src.case_id or "scan")
        unique.append(src)
    pins = pins or {}
    taken: set[str] = set()
    pinned = set()
    for src in unique:  # earlier runs' case_ids first, so adding files renames nothing
        cid = pins.get(src.source_id)
        if cid and cid not in taken:
            src.case_id = cid
            taken.add(cid)
            pinned.add(id(src))
    # The ids of earlier runs stay reserved even for sources not given this time, so a
    # new scan never takes over (and retires) the row of another.
    used = taken | set(pins.values())
    for src in unique:
        if id(src) in pinned:
            continue
        base = src.case_id
        if base in used:
            cid = shorten_case_id(f"{base}-{_hash(src.key, 8)}")
            n = 2
            while cid in used:  # a hash collision: practically never
                cid = shorten_case_id(f"{base}-{_hash(src.key, 8)}-{n}")
                n += 1
            src.case_id = cid
        used.add(src.case_id)
    out.sources = unique
    return out
