"""Axial previews of painted training scans beside the real CT, to check them by eye.

``python -m training.synth_preview --out /tmp/synth_preview.png --seeds 1 2 3``

One row per anatomy source (the three image-less label maps, a phantom anatomy, the
shared CT's map), one column per seed: the axial slice through the liver's centre of
mass (or the middle slice), in the canonical orientation (anterior up, patient right
on the image's left, as radiologists view it), window [-160, 240] HU, and the class
map outline beside it; the last row shows the real CT at three levels.
"""

from __future__ import annotations

import argparse

import numpy as np

from client.reading.preprocess import canonical_axes


def canonical(arr, direction):
    """An array stored with ``direction`` in the canonical orientation (z, y, x)."""
    axes, flips = canonical_axes(direction)
    a = np.transpose(arr, axes)
    fl = tuple(k for k in range(3) if flips[k])
    return np.flip(a, fl) if fl else a


def _window(hu, lo=-160.0, hi=240.0):
    return (np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _tile(img2d, size=160):
    from PIL import Image

    return np.asarray(Image.fromarray(img2d).resize((size, size), Image.BILINEAR))


def _class_rgb(cls2d):
    rng = np.random.default_rng(3)
    pal = (rng.uniform(60, 255, (256, 3))).astype(np.uint8)
    pal[0] = 0
    return pal[cls2d]


def preview(sources, seeds, out, variety=True, size=160):
    from PIL import Image

    from .synth import synth_scan

    rows = []
    for src in sources:
        row = []
        for seed in seeds:
            s = synth_scan(seed, src, multiclass=True, variety=variety, scenario="full")
            hu = canonical(s["hu"], s["direction"])
            cls = canonical(s["classes"], s["direction"])
            zs = np.flatnonzero((cls == 1).any((1, 2)))
            z = int(zs[len(zs) * 2 // 5]) if len(zs) else hu.shape[0] // 2
            sp = s["spacing"]
            ax, _ = canonical_axes(s["direction"])
            sy, sx = sp[ax[1]], sp[ax[2]]
            g = _window(hu[z])
            c = _class_rgb(cls[z])
            # physical aspect: resample to square mm
            from PIL import Image as _I

            h, w = g.shape
            scale = size / max(h * sy, w * sx)
            shp = (max(1, int(w * sx * scale)), max(1, int(h * sy * scale)))
            gi = np.asarray(_I.fromarray(g).resize(shp, _I.BILINEAR))
            ci = np.asarray(_I.fromarray(c).resize(shp, _I.NEAREST))
            pad = np.zeros((size, size), np.uint8)
            pad[: gi.shape[0], : gi.shape[1]] = gi
            padc = np.zeros((size, size, 3), np.uint8)
            padc[: ci.shape[0], : ci.shape[1]] = ci
            row += [np.repeat(pad[..., None], 3, 2), padc]
        rows.append(np.concatenate(row, 1))
    # Real CT for comparison (its own image).
    try:
        from .synth import real_classes, real_image

        hu, _ = real_image()
        zs = np.flatnonzero((real_classes() == 1).any((1, 2)))
        tiles = []
        for f in (0.2, 0.4, 0.7):
            t = _tile(_window(hu[int(zs[int(f * (len(zs) - 1))])]), size)
            tiles.append(np.repeat(t[..., None], 3, 2))
        real = np.concatenate(tiles, 1)
        width = rows[0].shape[1] if rows else real.shape[1]
        pad = np.zeros((size, width, 3), np.uint8)
        pad[:, : min(width, real.shape[1])] = real[:, :width]
        rows.append(pad)
    except FileNotFoundError:
        pass
    img = np.concatenate(rows, 0)
    Image.fromarray(img).save(out)
    return out


def main(argv=None) -> int:
    from .labelmap_body import LABELMAP_SUBJECTS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/synth_preview.png")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--sources", nargs="+", default=[*LABELMAP_SUBJECTS, "phantom", "real"])
    ap.add_argument("--no_variety", action="store_true")
    ap.add_argument("--size", type=int, default=160)
    args = ap.parse_args(argv)
    print(preview(args.sources, args.seeds, args.out, not args.no_variety, args.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
