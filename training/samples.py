"""Training samples at model size: phantoms and augmented real CT.

Every sample goes through :func:`client.reading.preprocess.preprocess` (image) and
:func:`client.reading.preprocess.labels_to_model` (labels): training and serving share
the preprocessing code, so a served scan looks to the model exactly like a
training sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from client.core.contract import LABEL_LIVER, LABEL_SPLEEN
from client.reading.preprocess import as_spec, labels_to_model, preprocess

from .phantoms import make_phantom
from .windows import training_window


def phantom_sample(
    seed: int, model_shape, rng: np.random.Generator | None = None, label_neighbours: bool = False
):
    """One phantom of random size, spacing, orientation, grade and contrast at model size.

    ``label_neighbours``: labels of the multi-class table (:mod:`training.classes`:
    kidneys and aorta too); the image is the same.

    ``model_shape`` may be a :class:`client.reading.preprocess.PreprocessSpec`: a ``spacing``
    spec gives one training window (:func:`training.windows.training_window`).

    Returns
    -------
    image : uint8 [1, z, y, x], labels : uint8 [z, y, x]
    """
    rng = rng or np.random.default_rng(seed)
    nxy = int(rng.integers(128, 256))
    fov = float(rng.uniform(300, 430))
    sz = float(rng.uniform(1.0, 5.0))
    spacing = (sz, fov / nxy, fov / nxy)
    nz = int(np.clip(round(rng.uniform(300, 480) / sz), 30, 240))
    p = make_phantom(
        seed,
        shape=(nz, nxy, nxy),
        spacing=spacing,
        contrast=bool(rng.random() < 0.2),
        random_orientation=bool(rng.random() < 0.3),
        cut_liver=bool(rng.random() < 0.05),
        label_neighbours=label_neighbours,
    )
    spec = as_spec(model_shape)
    if spec.mode != "resize":
        return training_window(
            p.hu, p.labels, p.spacing, p.direction, spec, np.random.default_rng([seed, 11])
        )
    image, _ = preprocess(p.hu, p.spacing, p.direction, spec.model_shape)
    labels = labels_to_model(p.labels, p.direction, spec.model_shape)
    return image, labels


@dataclass
class RealCT:
    """A real CT with reference labels, read once (SimpleITK) for augmentation."""

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple
    direction: np.ndarray

    @classmethod
    def load(cls, ct_path: str | Path, labels_path: str | Path, label_map=None) -> RealCT:
        import SimpleITK as sitk

        img = sitk.ReadImage(str(ct_path))
        lab = sitk.ReadImage(str(labels_path))
        hu = sitk.GetArrayFromImage(img).astype(np.int16)
        labels = sitk.GetArrayFromImage(lab).astype(np.uint8)
        if label_map:
            out = np.zeros_like(labels)
            for src, dst in label_map.items():
                out[labels == int(src)] = int(dst)
            labels = out
        if hu.shape != labels.shape:
            raise ValueError(f"{ct_path}: image {hu.shape} and labels {labels.shape} differ")
        return cls(
            hu=hu,
            labels=labels,
            spacing=tuple(img.GetSpacing())[::-1],
            direction=np.asarray(img.GetDirection()).reshape(3, 3),
        )


def real_ct_sample(ct: RealCT, seed: int, model_shape):
    """Augmented copy of a real CT: rotation, scaling, z-crop, steatosis shift, noise.

    The steatosis shift moves liver parenchyma attenuation (keeping its texture) to
    a random liver/spleen ratio in 0.2-1.5, so the model sees fatty livers that the
    real scan does not have.
    """
    rng = np.random.default_rng(seed)
    hu = ct.hu.astype(np.float32)
    labels = ct.labels
    liver = labels == LABEL_LIVER
    spleen = labels == LABEL_SPLEEN
    if liver.any() and spleen.any():
        s_mean = float(np.median(hu[spleen]))
        l_mean = float(np.median(hu[liver]))
        target = rng.uniform(0.2, 1.5) * max(s_mean, 20.0)
        soft = ndi.gaussian_filter(liver.astype(np.float32), 0.7)
        hu = hu + soft * (target - l_mean)
    # Rotation about the slice axis and isotropic scaling, on the array grid.
    ang = np.deg2rad(rng.uniform(-12, 12))
    scale = rng.uniform(0.9, 1.1)
    c, s = np.cos(ang), np.sin(ang)
    mat = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) / scale
    centre = (np.array(hu.shape) - 1) / 2
    offset = centre - mat @ centre
    hu = ndi.affine_transform(hu, mat, offset=offset, order=1, cval=-1000.0)
    labels = ndi.affine_transform(labels, mat, offset=offset, order=0, cval=0)
    # Random z crop (different scan ranges), keeping at least 60 % of slices.
    nz = hu.shape[0]
    keep = int(rng.uniform(0.6, 1.0) * nz)
    z0 = int(rng.integers(0, nz - keep + 1))
    hu, labels = hu[z0 : z0 + keep], labels[z0 : z0 + keep]
    hu = hu + rng.standard_normal(hu.shape).astype(np.float32) * rng.uniform(0, 10)
    image, _ = preprocess(hu, ct.spacing, ct.direction, model_shape)
    return image, labels_to_model(labels, ct.direction, model_shape)


def build_pool(
    n_phantoms: int,
    n_real: int,
    model_shape,
    real_ct: RealCT | None = None,
    seed0: int = 0,
    progress=None,
):
    """Pre-generate a pool of samples (cheap next to a training step on CPU).

    Returns
    -------
    images : uint8 [N, 1, z, y, x], labels : uint8 [N, z, y, x]
    """
    model_shape = tuple(int(n) for n in model_shape)
    n = n_phantoms + (n_real if real_ct is not None else 0)
    images = np.zeros((n, 1, *model_shape), np.uint8)
    labels = np.zeros((n, *model_shape), np.uint8)
    for i in range(n_phantoms):
        images[i], labels[i] = phantom_sample(seed0 + i, model_shape)
        if progress:
            progress(i + 1, n)
    if real_ct is not None:
        for j in range(n_real):
            k = n_phantoms + j
            images[k], labels[k] = real_ct_sample(real_ct, seed0 + 100_000 + j, model_shape)
            if progress:
                progress(k + 1, n)
    return images, labels


def main(argv=None) -> int:
    """``python -m training.samples --out pool.npz --n_phantoms 500 --n_real 250``."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--out", required=True, help="npz file to write (images, labels)")
    ap.add_argument("--n_phantoms", type=int, default=500)
    ap.add_argument("--n_real", type=int, default=250, help="augmented copies of --real_ct")
    ap.add_argument("--real_ct", default=None, help="CT NIfTI (labels 1 liver, 2 spleen)")
    ap.add_argument("--real_labels", default=None)
    ap.add_argument("--model_shape", type=int, nargs=3, default=(64, 64, 64))
    ap.add_argument("--seed0", type=int, default=0)
    args = ap.parse_args(argv)
    real = RealCT.load(args.real_ct, args.real_labels) if args.real_ct else None

    def progress(i, n):
        if i % 25 == 0 or i == n:
            print(f"{i}/{n}", file=sys.stderr, flush=True)

    images, labels = build_pool(
        args.n_phantoms, args.n_real, args.model_shape, real, args.seed0, progress
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, images=images, labels=labels)
    print(f"wrote {args.out}: {len(images)} samples at {tuple(args.model_shape)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
