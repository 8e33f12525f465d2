"""Label names beside NIfTI masks, for 3D Slicer and ITK-SNAP.

A mask ``masks/<case_id>.nii.gz`` holds 0 background, 1 liver, 2 spleen
(:data:`client.core.contract.LABEL_NAMES`). Viewers show bare numbers unless told what
they mean, so :func:`write_label_sidecars` writes beside it:

* ``<case_id>.ctbl``: a 3D Slicer colour table (``value name R G B A`` per line; load
  it with the mask, or pick it as the mask's colour table in Slicer's Volumes module);
* ``<case_id>.itksnap.txt``: an ITK-SNAP label description file (Segmentation >
  Import Label Descriptions).

Colours are those of the QC pictures (liver red, spleen green).
"""

from __future__ import annotations

from pathlib import Path

from client.core.atomic import atomic_path
from client.core.contract import LABEL_BACKGROUND, LABEL_LIVER, LABEL_NAMES, LABEL_SPLEEN

# RGB per label, shared with the QC pictures.
LABEL_COLOURS = {
    LABEL_BACKGROUND: (0, 0, 0),
    LABEL_LIVER: (230, 60, 50),
    LABEL_SPLEEN: (40, 200, 80),
}

__all__ = [
    "LABEL_COLOURS",
    "sidecar_paths",
    "slicer_ctbl",
    "itksnap_labels",
    "write_label_sidecars",
]


def _stem(mask_path: Path) -> str:
    name = mask_path.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return mask_path.stem


def sidecar_paths(mask_path: str | Path) -> dict[str, Path]:
    """Paths of the sidecars of ``mask_path``: ``{"slicer": ..., "itksnap": ...}``."""
    mask_path = Path(mask_path)
    stem = _stem(mask_path)
    return {
        "slicer": mask_path.with_name(f"{stem}.ctbl"),
        "itksnap": mask_path.with_name(f"{stem}.itksnap.txt"),
    }


def slicer_ctbl(names: dict[int, str] = LABEL_NAMES) -> str:
    """3D Slicer colour table text: comment lines, then ``value name R G B A``."""
    lines = ["# HepaScreen label colour table (3D Slicer)", f"# {len(names)} values"]
    for value in sorted(names):
        r, g, b = LABEL_COLOURS.get(value, (128, 128, 128))
        alpha = 0 if value == LABEL_BACKGROUND else 255
        lines.append(f"{value} {names[value].replace(' ', '_')} {r} {g} {b} {alpha}")
    return "\n".join(lines) + "\n"


def itksnap_labels(names: dict[int, str] = LABEL_NAMES) -> str:
    """ITK-SNAP label description text (IDX R G B A VIS MSH "LABEL" per line)."""
    head = [
        "################################################",
        "# ITK-SnAP Label Description File (HepaScreen)",
        "# File format:",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "# Fields:",
        "#    IDX:   Zero-based index",
        "#    -R-:   Red color component (0..255)",
        "#    -G-:   Green color component (0..255)",
        "#    -B-:   Blue color component (0..255)",
        "#    -A-:   Label transparency (0.00 .. 1.00)",
        "#    VIS:   Label visibility (0 or 1)",
        "#    MSH:   Label mesh visibility (0 or 1)",
        "#  LABEL:   Label description",
        "################################################",
    ]
    body = []
    for value in sorted(names):
        r, g, b = LABEL_COLOURS.get(value, (128, 128, 128))
        bg = value == LABEL_BACKGROUND
        label = "Clear Label" if bg else names[value]
        vis = 0 if bg else 1
        body.append(
            f'{value:5d} {r:5d} {g:4d} {b:4d} {0 if bg else 1:8d} {vis:2d} {vis:2d}    "{label}"'
        )
    return "\n".join(head + body) + "\n"


def write_label_sidecars(
    mask_path: str | Path, names: dict[int, str] = LABEL_NAMES
) -> dict[str, Path]:
    """Write the 3D Slicer and ITK-SNAP label files beside a mask (atomically).

    Parameters
    ----------
    mask_path : str or Path
        The mask file (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``); it need not exist yet.
    names : dict of int to str
        Label value -> name (default: 0 background, 1 liver, 2 spleen).

    Returns
    -------
    dict
        ``{"slicer": Path, "itksnap": Path}``.
    """
    paths = sidecar_paths(mask_path)
    for key, text in (("slicer", slicer_ctbl(names)), ("itksnap", itksnap_labels(names))):
        with atomic_path(paths[key], ".txt") as tmp:
            Path(tmp).write_text(text)
    return paths
