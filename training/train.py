"""Train the Paddle VNet from a MedicalSeg-format YAML config.

``python -m training.train --config training/configs/lits_vnet_original.yml --save_dir runs/x``

Reads the original project's config as is (only its dataset paths changed):
``batch_size``, ``iters``, ``train_dataset``/``val_dataset``, ``optimizer``
(sgd, momentum, weight_decay), ``lr_scheduler`` (PolynomialDecay), ``loss``
(MixedLoss of CrossEntropyLoss and DiceLoss with ``coef``), ``model`` (VNet).

Datasets (``type``):

* ``MedicalDataset`` - MedicalSeg's preprocessed layout: ``dataset_root`` holds
  ``train_list.txt``/``val_list.txt`` whose lines are ``images/x.npy labels/x.npy``;
  images are MedicalSeg's normalised float volumes in [0, 1] (HUNorm) at model
  size, labels integer. Transforms ``RandomRotation3D`` (``degrees``) and
  ``RandomFlip3D`` (``prob``) are applied as MedicalSeg does.
* ``FolderDataset`` - NIfTI/NRRD image/label pairs, MSD-style ``imagesTr``/``labelsTr``
  (``dataset_root``), with ``label_map`` (e.g. ``{liver: 1}`` for Task03 Liver's
  label 1 or ``{liver: 5, spleen: 1}`` for TotalSegmentator) and ``val_fraction``.
  Each pair goes through ``client.reading.preprocess`` (the served preprocessing) once and
  is cached as ``.npz`` under ``cache_dir``.
* ``PhantomDataset`` - synthetic phantoms generated on the fly (``num_samples``,
  ``seed``) with ``training.phantoms.make_phantom``.
* ``PoolDataset`` - a pool of ``training.synth`` shards (``pool_dir``, optional ``start``
  and ``num_samples``): the data the shipped model was trained on; its ``pool.json``
  must declare the run's preprocessing.

Preprocessing (a :class:`client.reading.preprocess.PreprocessSpec`): ``preprocess:`` in
the config (``{mode: spacing, spacing_mm: [6, 6, 6]}``; default ``resize``, MedicalSeg's
whole-volume resize) or ``--spacing_mm Z Y X``, with ``model_shape``. ``resize``: every
sample is the whole volume at model size. ``spacing`` (the shipped model's kind): a scan
goes through the serving code's fixed-spacing grid (body crop, resampling, centred
padding) and each training sample is one model-size window of it
(``training.windows.random_window``: centred on liver/spleen 70 % of the time, as in
``training.synth`` pools); validation at model size uses one fixed window per case, and
on the scan's grid every window the client cuts, stitched back
(``client.reading.preprocess.window_batch`` / ``to_scan_grid``). ``MedicalDataset``
holds MedicalSeg's model-size volumes and is ``resize`` only. ``training.export`` with
the same config writes the config's preprocessing into the ONNX metadata.

Writes ``SAVE_DIR/iter_N/model.pdparams`` (+ ``model.pdopt``) every
``--save_interval`` iterations, ``best_model/model.pdparams`` by mean validation
Dice, ``train_log.jsonl`` and ``--resume_model`` continues from an ``iter_N``
folder. Validation reports Dice per class at model size and, for phantom and
folder datasets, on the scan's original grid (labels mapped back with
``client.reading.preprocess.to_scan_grid``).

On this CPU Paddle's Conv3D is slow (~7 GFLOP/s; issue 4 facts): the shipped demo
model was trained with the PyTorch twin (``training.demo_train``: AdamW, EMA, synth
pools) and converted to these parameter names. This trainer takes the same kind of
model and data (``preprocess: spacing``, ``PoolDataset``) with the config's recipe
(SGD, polynomial decay, MixedLoss) and is the one to use on a GPU machine
(docs/training.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from client.reading.preprocess import PreprocessSpec, as_spec

from .config import build_model, load_config, model_shape_of, preprocess_spec_of
from .metrics import dice_per_class as dice_scores


# --- transforms (MedicalSeg names) ------------------------------------------------------
class RandomRotation3D:
    """Rotate image and label by a random angle in [-degrees, degrees] in a random axis plane."""

    def __init__(self, degrees=90, rotate_planes=((0, 1), (0, 2), (1, 2)), prob=1.0):
        self.degrees = float(degrees)
        self.planes = [tuple(p) for p in rotate_planes]
        self.prob = prob

    def __call__(self, image, label, rng):
        if rng.random() >= self.prob:
            return image, label
        plane = self.planes[int(rng.integers(len(self.planes)))]
        angle = float(rng.uniform(-self.degrees, self.degrees))
        image = ndi.rotate(image, angle, axes=plane, reshape=False, order=1, mode="constant")
        label = ndi.rotate(label, angle, axes=plane, reshape=False, order=0, mode="constant")
        return image, label


class RandomFlip3D:
    """Flip image and label along a random axis with probability ``prob``."""

    def __init__(self, prob=0.5, flip_axis=None):
        self.prob = prob
        self.axes = [flip_axis] if isinstance(flip_axis, int) else (flip_axis or [0, 1, 2])

    def __call__(self, image, label, rng):
        if rng.random() < self.prob:
            ax = int(self.axes[int(rng.integers(len(self.axes)))])
            image, label = np.flip(image, ax).copy(), np.flip(label, ax).copy()
        return image, label


TRANSFORMS = {"RandomRotation3D": RandomRotation3D, "RandomFlip3D": RandomFlip3D}


def build_transforms(specs):
    out = []
    for spec in specs or []:
        spec = dict(spec)
        kind = spec.pop("type")
        if kind not in TRANSFORMS:
            raise ValueError(f"unsupported transform {kind!r} (supported: {sorted(TRANSFORMS)})")
        out.append(TRANSFORMS[kind](**spec))
    return out


# --- datasets ------------------------------------------------------------------------
def _model_input(hu, labels, spacing, direction, spec):
    """A scan and its labels on the model-input grid of ``spec`` and the record that maps
    predictions back: ``resize``: the model-size volume; ``spacing``: the padded
    fixed-spacing grid (windows are cut by :meth:`_Base.window`)."""
    from client.reading.preprocess import (
        labels_to_grid,
        labels_to_model,
        preprocess,
        preprocess_grid,
    )

    if spec.mode == "resize":
        u8, record = preprocess(hu, spacing, direction, spec.model_shape)
        return u8, labels_to_model(labels, direction, spec.model_shape), record
    grid, record = preprocess_grid(hu, spacing, direction, spec)
    return grid[None], labels_to_grid(labels, record), record


class _Base:
    transforms: list
    spec: PreprocessSpec | None  # None: model-size samples of unstated shape (resize)

    @property
    def model_shape(self) -> tuple | None:
        return self.spec.model_shape if self.spec is not None else None

    @property
    def windowed(self) -> bool:
        """Samples are fixed-spacing grids, cut into model-size windows."""
        return self.spec is not None and self.spec.mode != "resize"

    def window(self, image_u8, label, rng):
        """A model-size training window of a loaded sample (``resize``: the sample)."""
        if not self.windowed:
            return image_u8, label
        from .windows import random_window

        return random_window(image_u8[0], label, self.spec, rng)

    def augment(self, image_u8, label, rng):
        if not self.transforms:
            return image_u8, label
        img = image_u8[0].astype(np.float32)
        for t in self.transforms:
            img, label = t(img, label, rng)
        return np.clip(np.round(img), 0, 255).astype(np.uint8)[None], label.astype(np.uint8)


class MedicalDataset(_Base):
    """MedicalSeg's preprocessed dataset (``train_list.txt`` / ``val_list.txt`` of npy pairs)."""

    def __init__(
        self,
        dataset_root,
        num_classes=3,
        transforms=(),
        mode="train",
        model_shape=None,
        spec=None,
        **_ignored,
    ):
        given = spec if spec is not None else model_shape
        self.spec = as_spec(given) if given is not None else None
        if self.windowed:
            raise ValueError(
                "MedicalDataset holds MedicalSeg's model-size volumes ('resize'); a "
                f"{self.spec.mode!r} model trains on FolderDataset, PhantomDataset or PoolDataset"
            )
        root = Path(dataset_root)
        lst = root / f"{'train' if mode == 'train' else 'val'}_list.txt"
        if not lst.is_file():
            raise FileNotFoundError(
                f"{lst}: MedicalDataset needs {lst.name} (lines 'images/x.npy labels/x.npy')"
            )
        self.items = [
            line.split()[:2]
            for line in lst.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        self.root, self.num_classes = root, num_classes
        self.transforms = build_transforms(transforms)

    def __len__(self):
        return len(self.items)

    def load(self, i):
        img = np.load(self.root / self.items[i][0]).astype(np.float32)
        lab = np.load(self.root / self.items[i][1]).astype(np.uint8)
        img = img.reshape(img.shape[-3:])
        # MedicalSeg stores HUNorm output in [0, 1]; serving feeds uint8 0..255 / max.
        u8 = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)[None]
        return u8, lab.reshape(lab.shape[-3:]), None


class FolderDataset(_Base):
    """NIfTI image/label pairs (MSD ``imagesTr``/``labelsTr``), preprocessed once and cached."""

    def __init__(
        self,
        dataset_root,
        num_classes=3,
        transforms=(),
        mode="train",
        model_shape=None,
        label_map=None,
        val_fraction=0.2,
        cache_dir=None,
        images="imagesTr",
        labels="labelsTr",
        seed=0,
        spec=None,
        **_ignored,
    ):
        from client.reading.io import image_suffix

        root = Path(dataset_root)
        imgs = sorted(
            p for p in (root / images).iterdir() if image_suffix(p) and not p.name.startswith(".")
        )
        pairs = []
        for p in imgs:
            lab = root / labels / p.name.replace("_0000", "")
            if not lab.exists():
                raise FileNotFoundError(f"{p}: no label map {lab}")
            pairs.append((p, lab))
        if not pairs:
            raise FileNotFoundError(f"{root / images}: no images")
        order = np.random.default_rng(seed).permutation(len(pairs))
        n_val = max(1, int(round(val_fraction * len(pairs)))) if len(pairs) > 1 else 0
        chosen = order[:n_val] if mode != "train" else order[n_val:]
        self.pairs = [pairs[i] for i in sorted(chosen)]
        self.label_map = dict(label_map or {"liver": 1, "spleen": 2})
        self.transforms = build_transforms(transforms)
        self.spec = as_spec(spec if spec is not None else model_shape)
        self.cache = Path(cache_dir or root / ".hepascreen_cache")
        self.cache.mkdir(parents=True, exist_ok=True)
        self.keep_original = mode != "train"

    def __len__(self):
        return len(self.pairs)

    def load(self, i):
        from client.reading.io import read_label_map, read_scan

        img_path, lab_path = self.pairs[i]
        st = img_path.stat()
        kind = "" if self.spec.mode == "resize" else f"|{sorted(self.spec.parameters().items())}"
        key = hashlib.sha1(
            f"{img_path.resolve()}|{st.st_mtime_ns}|{self.model_shape}|{sorted(self.label_map.items())}{kind}".encode()
        ).hexdigest()[:16]
        cached = self.cache / f"{key}.npz"
        scan = labels = record = None
        if cached.exists():
            z = np.load(cached)
            u8, lab = z["image"], z["label"]
        else:
            scan = read_scan(img_path)
            labels = read_label_map(lab_path, scan, self.label_map)
            u8, lab, record = _model_input(
                scan.array, labels, scan.spacing, scan.direction, self.spec
            )
            np.savez(cached, image=u8, label=lab)
        original = None
        if self.keep_original:
            if scan is None:  # cached tensors; the original grid needs the scan once more
                scan = read_scan(img_path)
                labels = read_label_map(lab_path, scan, self.label_map)
                _, _, record = _model_input(
                    scan.array, labels, scan.spacing, scan.direction, self.spec
                )
            original = (labels, record)
        return u8, lab, original


class PhantomDataset(_Base):
    """Synthetic phantoms generated on the fly (``training.samples.phantom_sample``)."""

    def __init__(
        self,
        num_samples=100,
        seed=0,
        num_classes=3,
        transforms=(),
        mode="train",
        model_shape=None,
        spec=None,
        **_ignored,
    ):
        self.n, self.seed = int(num_samples), int(seed)
        self.transforms = build_transforms(transforms)
        self.spec = as_spec(spec if spec is not None else model_shape)
        self.keep_original = mode != "train"

    def __len__(self):
        return self.n

    def load(self, i):
        from .phantoms import make_phantom

        rng = np.random.default_rng(self.seed + i)
        nxy = int(rng.integers(96, 160))
        p = make_phantom(
            self.seed + i,
            shape=(int(rng.integers(40, 90)), nxy, nxy),
            random_orientation=bool(rng.random() < 0.3),
        )
        u8, lab, record = _model_input(p.hu, p.labels, p.spacing, p.direction, self.spec)
        return u8, lab, ((p.labels, record) if self.keep_original else None)


class PoolDataset(_Base):
    """Model-size samples of a ``training.synth`` pool (``pool_dir/synth_*.npz``, read
    once): ``num_samples`` of them from ``start`` (default all). The pool's ``pool.json``
    must declare the run's preprocessing (a pool is made for one spec)."""

    def __init__(
        self,
        pool_dir,
        start=0,
        num_samples=None,
        num_classes=3,
        transforms=(),
        mode="train",
        model_shape=None,
        spec=None,
        **_ignored,
    ):
        import json

        self.spec = as_spec(spec if spec is not None else model_shape)
        pool = Path(pool_dir)
        meta_path = pool / "pool.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: not a training.synth pool")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        made = PreprocessSpec.from_parameters(meta, tuple(meta["model_shape"]))
        if made != self.spec:
            raise ValueError(f"{pool} was made for {made}, the run preprocesses with {self.spec}")
        images, labels = [], []
        for path in sorted(pool.glob("synth_*.npz")):
            with np.load(path) as z:
                images.append(z["images"])
                labels.append(z["labels"])
        if not images:
            raise FileNotFoundError(f"{pool}: no synth_*.npz shards")
        stop = None if num_samples is None else int(start) + int(num_samples)
        self.images = np.concatenate(images)[int(start) : stop]
        self.labels = np.concatenate(labels)[int(start) : stop]
        if int(self.labels.max(initial=0)) >= int(num_classes):
            raise ValueError(
                f"{pool}: labels reach {int(self.labels.max())}, {num_classes} classes"
            )
        self.transforms = build_transforms(transforms)

    def __len__(self):
        return len(self.images)

    def load(self, i):
        return self.images[i], self.labels[i], None


DATASETS = {
    "MedicalDataset": MedicalDataset,
    "FolderDataset": FolderDataset,
    "PhantomDataset": PhantomDataset,
    "PoolDataset": PoolDataset,
}


def build_dataset(cfg: dict, spec, mode: str):
    """The dataset a config entry describes (``type`` and its options), for ``spec``
    (a :class:`client.reading.preprocess.PreprocessSpec` or a model shape)."""
    cfg = dict(cfg)
    kind = cfg.pop("type")
    if kind not in DATASETS:
        raise ValueError(f"unsupported dataset {kind!r} (supported: {sorted(DATASETS)})")
    cfg["mode"] = mode
    return DATASETS[kind](spec=as_spec(spec), **cfg)


# --- loss, optimiser ---------------------------------------------------------------
def mixed_loss(logits, target, num_classes: int, coef=(0.3, 0.7)):
    """MedicalSeg MixedLoss: coef[0] * CrossEntropy + coef[1] * (1 - mean soft Dice)."""
    import paddle
    import paddle.nn.functional as F

    ce = F.cross_entropy(logits, target.unsqueeze(1), axis=1).mean()
    prob = F.softmax(logits, axis=1)
    onehot = F.one_hot(target, num_classes).transpose([0, 4, 1, 2, 3])
    dims = [0, 2, 3, 4]
    inter = (prob * onehot).sum(axis=dims)
    denom = prob.sum(axis=dims) + onehot.sum(axis=dims)
    dice = 1.0 - ((2.0 * inter + 1e-5) / (denom + 1e-5)).mean()
    return coef[0] * ce + coef[1] * dice + paddle.zeros([1])


def loss_coefs(cfg: dict) -> tuple[float, float]:
    types = cfg.get("loss", {}).get("types", [])
    for t in types:
        if t.get("type") == "MixedLoss":
            names = [x.get("type") for x in t.get("losses", [])]
            if names != ["CrossEntropyLoss", "DiceLoss"]:
                raise ValueError(
                    f"MixedLoss of {names} not supported (CrossEntropyLoss + DiceLoss)"
                )
            c = t.get("coef", [0.3, 0.7])
            return float(c[0]), float(c[1])
    raise ValueError("config loss must be a MixedLoss of CrossEntropyLoss and DiceLoss")


def build_optimizer(cfg: dict, model, iters: int):
    import paddle

    sch = dict(cfg.get("lr_scheduler", {}))
    if sch.get("type", "PolynomialDecay") != "PolynomialDecay":
        raise ValueError(f"lr_scheduler {sch.get('type')} not supported (PolynomialDecay)")
    lr = paddle.optimizer.lr.PolynomialDecay(
        learning_rate=float(sch.get("learning_rate", 0.05)),
        decay_steps=int(sch.get("decay_steps", iters)),
        end_lr=float(sch.get("end_lr", 0.0)),
        power=float(sch.get("power", 0.9)),
    )
    opt = dict(cfg.get("optimizer", {}))
    if opt.get("type", "sgd") != "sgd":
        raise ValueError(f"optimizer {opt.get('type')} not supported (sgd)")
    return lr, paddle.optimizer.Momentum(
        learning_rate=lr,
        momentum=float(opt.get("momentum", 0.9)),
        weight_decay=float(opt.get("weight_decay", 1e-4)),
        parameters=model.parameters(),
    )


def _opt_state_by_structured_name(model, opt) -> dict:
    """Optimizer state keyed by structured parameter names (Paddle keys it by global
    variable names such as ``conv3d_21.w_0``, which differ between model instances)."""
    names = {p.name: n for n, p in model.named_parameters()}
    out = {}
    for k, v in opt.state_dict().items():
        for pname, sname in names.items():
            if k.startswith(pname + "_"):
                out["@" + sname + k[len(pname) :]] = v
                break
        else:
            out[k] = v
    return out


def _opt_state_for(model, state: dict) -> dict:
    names = {n: p.name for n, p in model.named_parameters()}
    out = {}
    for k, v in state.items():
        if k.startswith("@"):
            # Longest structured name that prefixes the key (names contain underscores).
            sname = max((n for n in names if k[1:].startswith(n + "_")), key=len)
            out[f"{names[sname]}_{k[2 + len(sname) :]}"] = v
        else:
            out[k] = v
    return out


# --- evaluation ---------------------------------------------------------------------
def evaluate(model, dataset, num_classes: int) -> dict:
    """Dice per class at model size (``spacing``: one fixed window per case) and, where
    the dataset keeps the original labels, on the scan's grid (``spacing``: every window
    the client cuts, stitched back)."""
    import paddle

    from client.reading.preprocess import normalise_network_input, to_scan_grid, window_batch

    def predict(u8):
        x = paddle.to_tensor(normalise_network_input(u8))
        return model(x)[0].argmax(axis=1).numpy().astype(np.uint8)

    model.eval()
    classes = tuple(range(1, num_classes))
    small, orig = [], []
    with paddle.no_grad():
        for i in range(len(dataset)):
            u8, lab, original = dataset.load(i)
            if not dataset.windowed:
                pred = predict(u8[None])[0]
                small.append(dice_scores(pred, lab, classes))
                if original is not None:
                    labels, record = original
                    orig.append(dice_scores(to_scan_grid(pred, record), labels, classes))
                continue
            wx, wy = dataset.window(u8, lab, np.random.default_rng([i, 11]))
            small.append(dice_scores(predict(wx[None])[0], wy, classes))
            if original is not None:
                labels, record = original
                xs = window_batch(u8[0], record)
                pred = np.concatenate([predict(xs[k : k + 4]) for k in range(0, len(xs), 4)])
                orig.append(dice_scores(to_scan_grid(pred, record), labels, classes))
    model.train()
    res = {"dice_model_size": np.nanmean(np.array(small), axis=0).round(4).tolist()}
    if orig:
        res["dice_original_grid"] = np.nanmean(np.array(orig), axis=0).round(4).tolist()
    return res


# --- loop ---------------------------------------------------------------------------
def train(
    cfg: dict,
    save_dir: Path,
    iters=None,
    batch_size=None,
    resume_model=None,
    save_interval=1000,
    log_iters=10,
    seed=0,
    max_minutes=None,
    spec=None,
) -> dict:
    """Train the config's VNet for ``spec`` (default: :func:`preprocess_spec_of` the config)."""
    import paddle

    from client.reading.preprocess import normalise_network_input

    paddle.seed(seed)
    rng = np.random.default_rng(seed)
    iters = int(iters or cfg.get("iters", 1000))
    batch_size = int(batch_size or cfg.get("batch_size", 2))
    spec = as_spec(spec) if spec is not None else preprocess_spec_of(cfg)
    if spec.model_shape != model_shape_of(cfg):
        raise ValueError(f"preprocessing for {spec.model_shape}, model for {model_shape_of(cfg)}")
    num_classes = int(cfg.get("model", {}).get("num_classes", 3))
    train_ds = build_dataset(cfg["train_dataset"], spec, "train")
    val_ds = build_dataset(cfg["val_dataset"], spec, "val") if cfg.get("val_dataset") else None
    if len(train_ds) == 0:
        raise ValueError("training dataset is empty")
    model = build_model(cfg)
    lr, opt = build_optimizer(cfg, model, iters)
    coef = loss_coefs(cfg)
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    start = 0
    if resume_model:
        rd = Path(resume_model)
        model.set_state_dict(paddle.load(str(rd / "model.pdparams")))
        opt.set_state_dict(_opt_state_for(model, paddle.load(str(rd / "model.pdopt"))))
        start = int(json.loads((rd / "state.json").read_text(encoding="utf-8"))["iter"])
        for _ in range(start):
            lr.step()
    log = open(save_dir / "train_log.jsonl", "a")
    best = -1.0
    t0 = time.time()
    losses = []
    it = start
    history = []
    while it < iters:
        if max_minutes is not None and time.time() - t0 > 60 * max_minutes:
            break
        xs, ys = [], []
        for _ in range(batch_size):
            u8, lab, _ = train_ds.load(int(rng.integers(len(train_ds))))
            u8, lab = train_ds.window(u8, lab, rng)
            u8, lab = train_ds.augment(u8, lab, rng)
            xs.append(u8)
            ys.append(lab)
        x = paddle.to_tensor(normalise_network_input(np.stack(xs)))
        y = paddle.to_tensor(np.stack(ys).astype(np.int64))
        logits = model(x)[0]
        loss = mixed_loss(logits, y, num_classes, coef)
        loss.backward()
        opt.step()
        opt.clear_grad()
        lr.step()
        it += 1
        losses.append(float(loss.numpy().reshape(-1)[0]))
        rec = None
        if it % log_iters == 0 or it == iters:
            rec = {
                "iter": it,
                "loss": round(float(np.mean(losses[-log_iters:])), 5),
                "lr": lr.get_lr(),
                "elapsed_s": round(time.time() - t0, 1),
            }
            print(json.dumps(rec), flush=True)
        if it % save_interval == 0 or it == iters:
            ck = save_dir / f"iter_{it}"
            ck.mkdir(exist_ok=True)
            paddle.save(model.state_dict(), str(ck / "model.pdparams"))
            paddle.save(_opt_state_by_structured_name(model, opt), str(ck / "model.pdopt"))
            (ck / "state.json").write_text(json.dumps({"iter": it}))
            rec = rec or {"iter": it}
            if val_ds is not None and len(val_ds):
                ev = evaluate(model, val_ds, num_classes)
                rec.update(val=ev)
                mean = float(np.nanmean(ev["dice_model_size"]))
                if mean > best:
                    best = mean
                    (save_dir / "best_model").mkdir(exist_ok=True)
                    paddle.save(model.state_dict(), str(save_dir / "best_model" / "model.pdparams"))
                print(json.dumps({"iter": it, "val": ev}), flush=True)
        if rec:
            log.write(json.dumps(rec) + "\n")
            log.flush()
            history.append(rec)
    log.close()
    return {"iters": it, "history": history, "losses": losses, "best_mean_dice": best}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.train", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--config", required=True)
    ap.add_argument("--save_dir", required=True)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--batch_size", type=int, default=None)
    ap.add_argument("--resume_model", default=None, help="an iter_N folder to continue from")
    ap.add_argument("--save_interval", type=int, default=1000)
    ap.add_argument("--log_iters", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max_minutes", type=float, default=None)
    ap.add_argument(
        "--spacing_mm",
        type=float,
        nargs=3,
        default=None,
        help="fixed-spacing preprocessing (z y x mm; the shipped model's kind), overriding "
        "the config's 'preprocess'",
    )
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    spec = preprocess_spec_of(cfg)
    if args.spacing_mm:
        spec = PreprocessSpec("spacing", spec.model_shape, tuple(args.spacing_mm))
    res = train(
        cfg,
        Path(args.save_dir),
        args.iters,
        args.batch_size,
        args.resume_model,
        args.save_interval,
        args.log_iters,
        args.seed,
        args.max_minutes,
        spec,
    )
    print(json.dumps({"iters": res["iters"], "best_mean_dice": res["best_mean_dice"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
