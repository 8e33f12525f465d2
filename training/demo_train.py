"""Train the CPU VNet with the PyTorch twin, save checkpoints and a Paddle state dict.

``python -m training.demo_train --pool_dir runs/pool_synth --save_dir training/checkpoints/RUN``

Data: pre-generated pools at model size, all made through ``client.reading.preprocess`` (the
serving code): ``--pool`` npz files (``training.samples``: phantoms and augmented
real CT) and/or ``--pool_dir``, a folder of shards written by ``training.synth``
(label-map synthesis) that is re-read every ``--reload_every`` iterations, so
training starts while the pool is still being generated.

Recipe (docs/model_card.md): MedicalSeg's MixedLoss (0.3 cross-entropy + 0.7 Dice),
AdamW with a polynomial decay driven by the larger of iteration and wall-time
progress (a time budget still ends at a low learning rate), random translations of
up to 4 voxels, an exponential moving average (EMA) of the weights that is what gets
validated and exported (a long run can be stopped at any time).

Run directory (``--save_dir``): ``latest.pt`` (model, EMA, optimizer, iteration,
elapsed time; written atomically every ``--ckpt_minutes``; ``--resume`` continues
from it), ``train_log.jsonl`` (loss every 50 iterations; every ``--val_every``
iterations Dice per validation set at model size and the real CT variants on their
original grid), ``model_paddle_names.npz`` / ``model.pdparams`` (EMA weights,
MedicalSeg names; ``--checkpoint_only`` converts without training) and
``train_summary.json``.

Validation sets: ``plain_phantoms`` (``training.samples.phantom_sample`` seeds
900,000+), ``synth_real_anatomy`` (``training.synth`` seeds 5,000,000+ painted from
the shared CT's label map) and ``synth_phantom_anatomy`` (seeds 5,100,000+ on phantom
anatomies 1,000+, never used by the pools), and ``real_ct_*``: the shared real CT
(``training.evaluate.real_ct_cases``: native, resampled to 0.8 x 0.8 x 5 mm, painted
contrast phases), Dice on the scan's own grid.

Multi-class pools (issue 19; ``pool.json`` holds ``classes``, written by
``training.synth --mixture neighbours_*``): the network gets one output per class
(``--num_classes``, default from ``pool.json``), Dice is logged per class
(``val_<set>_<class name>``), the real CT is scored against its 61-structure map
mapped to the class table, and the validation sets follow the pool's source-level
split: ``synth_heldout_<anatomy>`` for every held-out real anatomy (never in the
pool), ``synth_train_<anatomy>`` for the first training one, phantom anatomies 1,000+
and plain phantoms labelling kidneys and aorta. ``--init`` from a checkpoint with
another number of classes keeps every layer but the last (``out_tr``), whose
background/liver/spleen rows are copied and the other rows freshly initialised.
``--grow_every N`` writes the pool's next shard (same preprocessing and mixture)
every N iterations in the training process itself, so one process (one core) both
grows the pool and trains.

Loss with more than 3 classes: the Dice term averages over the classes present in
the batch's labels (with 13 classes most are absent from a 64^3 window; any soft
probability on an absent class scores Dice ~0 there, and averaging those terms would
push every rare class towards never being predicted). Three-class runs keep the old
average over all classes.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .metrics import dice_per_class


def save_pdparams(state: dict, path: Path) -> None:
    """Save a name -> array state dict as a Paddle ``.pdparams`` (MedicalSeg names)."""
    import paddle

    paddle.save({k: paddle.to_tensor(np.asarray(v)) for k, v in state.items()}, str(path))


def _mixed_loss(torch, logits, target, num_classes=3, coef=(0.3, 0.7)):
    ce = torch.nn.functional.cross_entropy(logits, target)
    prob = torch.softmax(logits, 1)
    onehot = torch.nn.functional.one_hot(target, num_classes).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    per_class = (2 * inter + 1e-5) / (denom + 1e-5)
    if num_classes > 3:  # multi-class: classes present in the batch only
        present = onehot.sum(dims) > 0
        dice = 1.0 - per_class[present].mean()
    else:
        dice = 1.0 - per_class.mean()
    return coef[0] * ce + coef[1] * dice


def load_init(model, state: dict) -> list[str]:
    """Load ``state`` into ``model``; tensors whose shape differs (another number of
    classes in ``out_tr``) get their overlapping leading block copied, the rest keeps
    the model's fresh initialisation. Returns the names partially copied."""
    import torch

    own = model.state_dict()
    partial = []
    for k, v in state.items():
        if k not in own:
            raise KeyError(f"--init checkpoint has {k!r}, which the model lacks")
        v = torch.as_tensor(v).to(own[k].dtype)
        if v.shape == own[k].shape:
            own[k] = v
        elif v.dim() == own[k].dim():
            sl = tuple(slice(0, min(a, b)) for a, b in zip(v.shape, own[k].shape))
            own[k][sl] = v[sl]
            partial.append(k)
        else:
            raise ValueError(f"{k}: checkpoint shape {tuple(v.shape)}, model {tuple(own[k].shape)}")
    model.load_state_dict(own)
    return partial


def grow_pool(pool_dir, shard: int = 100) -> int:
    """Write the next shard of a ``training.synth`` pool (its ``pool.json`` settings)."""
    from client.reading.preprocess import PreprocessSpec

    from .synth import MIXTURES, next_shard_start, write_shards

    meta = json.loads((Path(pool_dir) / "pool.json").read_text(encoding="utf-8"))
    spec = PreprocessSpec.from_parameters(meta, tuple(meta["model_shape"]))
    name = meta.get("mixture", "synthetic")
    start = next_shard_start(pool_dir)
    write_shards(
        pool_dir, start, shard, shard, spec=spec, mixture=MIXTURES[name], mixture_name=name
    )
    return start


def pool_meta(pool_dir) -> dict:
    """``pool.json`` of a pool folder ({} when absent)."""
    meta = Path(pool_dir) / "pool.json" if pool_dir else None
    if meta is not None and meta.exists():
        return json.loads(meta.read_text(encoding="utf-8"))
    return {}


def load_pools(files, pool_dir, seen=None):
    """Images and labels of the npz ``files`` and of the shards in ``pool_dir``.

    ``seen`` (a dict path -> (images, labels)) caches shards already read.
    """
    seen = {} if seen is None else seen
    paths = list(files or [])
    if pool_dir:
        paths += sorted(glob.glob(os.path.join(pool_dir, "synth_*.npz")))
    for p in paths:
        if p not in seen:
            with np.load(p) as z:
                seen[p] = (z["images"], z["labels"])
    if not seen:
        raise SystemExit(f"no training samples: --pool {files} --pool_dir {pool_dir}")
    images = np.concatenate([seen[p][0] for p in paths])
    labels = np.concatenate([seen[p][1] for p in paths])
    return images, labels, seen


# First validation seed per anatomy source (pools use seeds below 1,000,000).
VAL_SEEDS = {
    "real": 5_000_000,
    "phantom": 5_100_000,
    "totalseg_s0328": 5_200_000,
    "totalseg_s0011": 5_300_000,
    "totalseg_s0327": 5_400_000,
}


def validation_sets(spec, n_plain=16, n_synth=24, split=None):
    """Fixed validation sets at model size: name -> (images, labels).

    ``spec``: a :class:`client.reading.preprocess.PreprocessSpec` or a model shape (``resize``);
    ``spacing`` specs give one fixed (seeded) training window per scan.
    ``split`` (a multi-class pool's ``{"train": [...], "held_out": [...]}``): class-table
    labels with issue 19's variety; one set per held-out real anatomy
    (``synth_heldout_<name>``) and for the first training one (``synth_train_<name>``).
    """
    from .samples import phantom_sample
    from .synth import synth_scan, training_window

    multiclass = split is not None
    sets = {}
    val = [phantom_sample(900_000 + i, spec, label_neighbours=multiclass) for i in range(n_plain)]
    sets["plain_phantoms"] = (np.stack([v[0] for v in val]), np.stack([v[1] for v in val]))
    if multiclass:
        todo = [(f"synth_heldout_{a}", a) for a in split["held_out"]]
        todo += [(f"synth_train_{a}", a) for a in split["train"][:1]]
        todo += [("synth_phantom_anatomy", "phantom")]
    else:
        todo = [("synth_real_anatomy", "real"), ("synth_phantom_anatomy", "phantom")]
    for name, source in todo:
        s0 = VAL_SEEDS[source]
        xs, ys = [], []
        for i in range(n_synth):
            aseed = 1000 + i if source == "phantom" else None
            s = synth_scan(
                s0 + i, source, anatomy_seed=aseed, multiclass=multiclass, variety=multiclass
            )
            lab = s["classes"] if multiclass else s["labels"]
            rng = np.random.default_rng([s0 + i, 11])
            x, y = training_window(s["hu"], lab, s["spacing"], s["direction"], spec, rng)
            xs.append(x)
            ys.append(y)
        sets[name] = (np.stack(xs), np.stack(ys))
    return sets


def pool_spec(pool_dir, model_shape):
    """The preprocessing a pool was made with (its ``pool.json``; none: ``resize``)."""
    from client.reading.preprocess import PreprocessSpec

    meta = Path(pool_dir) / "pool.json" if pool_dir else None
    if meta is not None and meta.exists():
        d = json.loads(meta.read_text(encoding="utf-8"))
        return PreprocessSpec.from_parameters(d, tuple(d["model_shape"]))
    return PreprocessSpec("resize", tuple(int(n) for n in model_shape))


def _atomic_save(torch, obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", nargs="+", default=None, help="npz files with images/labels")
    ap.add_argument("--pool_dir", default=None, help="folder of training.synth shards")
    ap.add_argument("--reload_every", type=int, default=200, help="iterations between re-reads")
    ap.add_argument("--save_dir", required=True)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--max_minutes", type=float, default=60.0)
    ap.add_argument("--batch_size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--ema", type=float, default=0.998, help="EMA decay (0 disables)")
    ap.add_argument("--val_phantoms", type=int, default=16)
    ap.add_argument("--val_synth", type=int, default=24, help="per synthetic validation set")
    ap.add_argument("--val_every", type=int, default=250)
    ap.add_argument("--no_real_ct", action="store_true", help="skip the real-CT validation")
    ap.add_argument("--ckpt_minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument(
        "--init",
        default=None,
        help="start from this checkpoint's (EMA) weights with a fresh optimiser (fine-tuning)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--num_classes", type=int, default=None, help="outputs (default: pool.json, else 3)"
    )
    ap.add_argument(
        "--grow_every",
        type=int,
        default=0,
        help="write the pool's next shard every N iterations (0: never)",
    )
    ap.add_argument("--grow_max", type=int, default=20000, help="stop growing at this pool size")
    ap.add_argument(
        "--checkpoint_only",
        action="store_true",
        help="only convert SAVE_DIR/latest.pt to model.pdparams (no training)",
    )
    return ap


def checkpoint_only(save: Path) -> int:
    """``--checkpoint_only``: ``latest.pt``'s EMA weights -> MedicalSeg names
    (``model_paddle_names.npz``, ``model.pdparams``) and ``classes.json``."""
    import torch

    from .torch_vnet import torch_state_to_paddle

    ck = torch.load(save / "latest.pt", weights_only=False)
    if ck.get("class_names"):
        (save / "classes.json").write_text(
            json.dumps({str(i): n for i, n in enumerate(ck["class_names"])})
        )
    state = ck.get("ema") or ck["model"]
    pd = torch_state_to_paddle({k: torch.as_tensor(v).float() for k, v in state.items()})
    np.savez(save / "model_paddle_names.npz", **pd)
    save_pdparams(pd, save / "model.pdparams")
    print(f"iteration {ck['iter']}: wrote {save / 'model.pdparams'}")
    return 0


@dataclass
class TrainingData:
    """What a run trains and validates on: the pool (images, labels, the shards read so
    far), its :class:`client.reading.preprocess.PreprocessSpec` (``pool.json``; none:
    ``resize`` at the pool's size), its source-level split and class names, the fixed
    validation sets and the real-CT cases."""

    images: np.ndarray
    labels: np.ndarray
    seen: dict
    spec: object
    split: dict | None
    class_names: list
    vsets: dict
    real_cases: list

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def training_data(args, error) -> TrainingData:
    """Read the pool, check its labels against the classes, build the validation sets.
    ``error(message)`` reports a bad argument (argparse's ``error``)."""
    images, labels, seen = load_pools(args.pool, args.pool_dir)
    spec = pool_spec(args.pool_dir, images.shape[2:])
    meta = pool_meta(args.pool_dir)
    split = meta.get("split")
    if meta.get("classes"):
        class_names = [meta["classes"][str(i)] for i in range(len(meta["classes"]))]
    else:
        class_names = ["background", "liver", "spleen"]
    n_cls = args.num_classes or len(class_names)
    if n_cls != len(class_names):
        error(f"--num_classes {n_cls}, but the pool's labels have {len(class_names)} classes")
    if int(labels.max()) >= n_cls:
        raise SystemExit(f"pool labels reach {int(labels.max())}, expected < {n_cls} classes")
    vsets = validation_sets(spec, args.val_phantoms, args.val_synth, split=split)
    real_cases = []
    if not args.no_real_ct:
        from .evaluate import DATA_DIR, real_ct_cases

        if (DATA_DIR / "ct.nii.gz").exists():
            real_cases = real_ct_cases(multiclass=n_cls > 3)
    return TrainingData(images, labels, seen, spec, split, class_names, vsets, real_cases)


class Trainer:
    """One run's model, EMA, optimiser, sampler and log, and its stages: :meth:`start`
    (fresh, ``--resume`` or ``--init``), :meth:`step` (one batch, growing and re-reading
    the pool on schedule), :meth:`validate`, :meth:`checkpoint` and :meth:`finish`."""

    def __init__(self, args, data: TrainingData, save: Path):
        import torch

        from .torch_vnet import TorchVNet

        self.torch, self.args, self.data, self.save = torch, args, data, save
        n_cls = data.num_classes
        self.model = TorchVNet(width=args.width, num_classes=n_cls)
        self.ema = TorchVNet(width=args.width, num_classes=n_cls)
        self.ema.load_state_dict(self.model.state_dict())
        self.ema.eval()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=1e-4)
        self.losses: list[float] = []

    def start(self) -> int:
        """Resume or initialise the weights, seed the sampler, open the log; returns the
        first iteration."""
        torch, args, save = self.torch, self.args, self.save
        it0, elapsed0, rng_state = 0, 0.0, None
        if args.resume and (save / "latest.pt").exists():
            ck = torch.load(save / "latest.pt", weights_only=False)
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["opt"])
            if ck.get("ema"):
                self.ema.load_state_dict({k: torch.as_tensor(v) for k, v in ck["ema"].items()})
            else:
                self.ema.load_state_dict(self.model.state_dict())
            it0, elapsed0 = ck["iter"], ck["elapsed"]
            rng_state = ck.get("rng")
            print(f"resumed {save / 'latest.pt'} at iteration {it0}", flush=True)
        elif args.init:
            ck = torch.load(args.init, weights_only=False)
            state = {
                k: torch.as_tensor(v).float() for k, v in (ck.get("ema") or ck["model"]).items()
            }
            partial = load_init(self.model, state)
            self.ema.load_state_dict(self.model.state_dict())
            print(
                f"initialised from {args.init} (iteration {ck.get('iter')}); "
                f"partially copied: {partial}",
                flush=True,
            )
        self.rng = np.random.default_rng([args.seed, it0])
        if rng_state is not None:
            self.rng.bit_generator.state = rng_state
        self.it0 = it0
        self.log = open(save / "train_log.jsonl", "a")
        self.write(
            {
                "event": "start",
                "iter": it0,
                "pool_size": int(len(self.data.images)),
                "num_classes": self.data.num_classes,
                "split": self.data.split,
                "args": {k: v for k, v in vars(args).items()},
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        self.log.flush()
        self.budget = args.max_minutes * 60.0
        self.t0 = time.time() - elapsed0
        return it0

    def write(self, rec: dict) -> None:
        self.log.write(json.dumps(rec) + "\n")

    def running(self, it: int) -> bool:
        return it < self.args.iters and time.time() - self.t0 < self.budget

    def to_input(self, u8):
        x = self.torch.from_numpy(u8.astype(np.float32))
        m = x.amax(dim=(1, 2, 3, 4), keepdim=True).clamp(min=1.0)
        return x / m  # client.reading.preprocess.normalise_network_input

    def predict(self, u8):
        with self.torch.no_grad():
            return self.ema(self.to_input(u8))[0].argmax(1).numpy().astype(np.uint8)

    def _refresh_pool(self, it: int) -> None:
        """``--grow_every``: write the pool's next shard; ``--reload_every``: re-read it."""
        args, d = self.args, self.data
        if args.grow_every and it % args.grow_every == 0 and it > self.it0:
            if len(d.images) < args.grow_max:
                t_g = time.time()
                s0 = grow_pool(args.pool_dir)
                self.write(
                    {"event": "grow", "iter": it, "shard": s0, "seconds": round(time.time() - t_g)}
                )
                d.images, d.labels, d.seen = load_pools(args.pool, args.pool_dir, d.seen)
        if args.pool_dir and it % args.reload_every == 0 and it > self.it0:
            n_before = len(d.images)
            d.images, d.labels, d.seen = load_pools(args.pool, args.pool_dir, d.seen)
            if len(d.images) != n_before:
                self.write({"event": "pool", "iter": it, "pool_size": len(d.images)})

    def step(self, it: int) -> None:
        """Iteration ``it``: learning rate, pool, one batch (random translation by a few
        voxels; no flips: orientation is canonical), optimiser and EMA updates."""
        torch, args, d, rng = self.torch, self.args, self.data, self.rng
        progress = max(it / args.iters, (time.time() - self.t0) / self.budget)
        for g in self.opt.param_groups:
            g["lr"] = args.lr * (1.0 - min(progress, 0.999)) ** 0.9
        self._refresh_pool(it)
        idx = rng.integers(0, len(d.images), size=args.batch_size)
        xb, yb = d.images[idx], d.labels[idx]
        shift = rng.integers(-4, 5, size=3)
        xb = np.roll(xb, shift, axis=(2, 3, 4))
        yb = np.roll(yb, shift, axis=(1, 2, 3))
        self.model.train()
        logits = self.model(self.to_input(xb))[0]
        target = torch.from_numpy(yb.astype(np.int64))
        loss = _mixed_loss(torch, logits, target, d.num_classes)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if args.ema > 0:
            decay = min(args.ema, (1.0 + it) / (10.0 + it))
            with torch.no_grad():
                for e, p in zip(self.ema.state_dict().values(), self.model.state_dict().values()):
                    if e.is_floating_point():
                        e.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
                    else:
                        e.copy_(p)
        else:
            self.ema.load_state_dict(self.model.state_dict())
        self.losses.append(float(loss.detach()))

    def log_progress(self, it: int) -> None:
        """Every 50 iterations: mean loss (and every ``--val_every`` the validation)."""
        if it % 50:
            return
        rec = {
            "iter": it,
            "loss": round(float(np.mean(self.losses[-50:])), 5),
            "lr": self.opt.param_groups[0]["lr"],
            "elapsed_s": round(time.time() - self.t0, 1),
            "pool_size": int(len(self.data.images)),
        }
        if it % self.args.val_every == 0:
            rec.update(self.validate())
        self.write(rec)
        self.log.flush()

    def validate(self) -> dict:
        """EMA Dice per class on every validation set (model size) and on the real-CT
        cases (their own grid, the run's preprocessing)."""
        from .evaluate import evaluate_case

        d, n_cls, names = self.data, self.data.num_classes, self.data.class_names
        out = {}
        vals = list(range(1, n_cls))
        for name, (vx, vy) in d.vsets.items():
            preds = np.concatenate([self.predict(vx[i : i + 4]) for i in range(0, len(vx), 4)])
            for v, dv in zip(vals, dice_per_class(preds, vy, vals)):
                out[f"val_{name}_{names[v]}"] = round(dv, 4)
        cmap = dict(enumerate(names)) if n_cls > 3 else None
        for name, hu, lab, sp, di in d.real_cases:
            r = evaluate_case(
                self.predict, hu, lab, sp, di, d.spec, assess_ratio=False, classes=cmap
            )
            out[f"real_ct_{name}_liver"] = round(r["dice_liver"], 4)
            out[f"real_ct_{name}_spleen"] = round(r["dice_spleen"], 4)
            if cmap and name == "native":
                for v in vals[2:]:
                    out[f"real_ct_{name}_{names[v]}"] = round(r[f"dice_{names[v]}"], 4)
        return out

    def checkpoint(self, it: int) -> None:
        """``latest.pt``, written atomically (EMA in half precision: < 40 MB)."""
        _atomic_save(
            self.torch,
            {
                "model": self.model.state_dict(),
                "ema": {
                    k: (v.half() if v.is_floating_point() else v)
                    for k, v in self.ema.state_dict().items()
                },
                "opt": self.opt.state_dict(),
                "iter": it,
                "elapsed": time.time() - self.t0,
                "rng": self.rng.bit_generator.state,
                "width": self.args.width,
                "model_shape": list(self.data.images.shape[2:]),
                "preprocess": self.data.spec.parameters(),
                "class_names": self.data.class_names,
                "split": self.data.split,
            },
            self.save / "latest.pt",
        )

    def finish(self, it: int) -> dict:
        """Final validation and checkpoint, EMA weights with MedicalSeg names
        (``model_paddle_names.npz``, ``model.pdparams``), ``train_summary.json``."""
        from .torch_vnet import torch_state_to_paddle

        args, d, save = self.args, self.data, self.save
        final = self.validate()
        self.checkpoint(it)
        state = torch_state_to_paddle(self.ema.state_dict())
        np.savez(save / "model_paddle_names.npz", **state)
        try:
            save_pdparams(state, save / "model.pdparams")
        except ImportError:  # Paddle absent: the npz has the same arrays
            pass
        summary = {
            "iters": it,
            "wall_time_s": round(time.time() - self.t0, 1),
            "batch_size": args.batch_size,
            "width": args.width,
            "model_shape": list(d.images.shape[2:]),
            "preprocess": d.spec.parameters(),
            "pool_size": int(len(d.images)),
            "class_names": d.class_names,
            "split": d.split,
            "validation": final,
            "final_loss": float(np.mean(self.losses[-50:])) if self.losses else None,
        }
        (save / "train_summary.json").write_text(json.dumps(summary, indent=2))
        self.write({"event": "end", "iter": it, **final})
        self.log.close()
        return summary


def main(argv=None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    save = Path(args.save_dir)
    if args.checkpoint_only:
        return checkpoint_only(save)
    if not args.pool and not args.pool_dir:
        ap.error("--pool or --pool_dir is required for training")
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    save.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(args, training_data(args, ap.error), save)
    it = trainer.start()
    last_ckpt = time.time()
    while trainer.running(it):
        trainer.step(it)
        it += 1
        trainer.log_progress(it)
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            trainer.checkpoint(it)
            last_ckpt = time.time()
    summary = trainer.finish(it)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
