"""Train the CPU demo VNet quickly with the PyTorch twin, save a Paddle checkpoint.

``python -m training.demo_train --pool runs/demo/pool_a.npz --save_dir runs/demo``

The recipe used for the shipped demo model (docs/model_card.md): quarter-width
VNet, isotropic 2x2x2 down/up convs, 64^3 input, a pre-generated pool of phantom
and augmented real-CT samples (``training.samples``; same preprocessing as
serving), MedicalSeg's MixedLoss (0.3 cross-entropy + 0.7 Dice), AdamW with a
polynomial decay driven by the larger of iteration and wall-time progress, so a
time budget still ends at a low learning rate. Writes ``latest.pt`` (resume),
``model.pdparams`` (MedicalSeg/Paddle names, loads into ``training.vnet.VNet``),
``train_log.jsonl`` and ``train_summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def dice_per_class(pred: np.ndarray, target: np.ndarray, classes=(1, 2)) -> list[float]:
    """Dice of each class over a whole batch (NaN when absent in both)."""
    out = []
    for c in classes:
        p, t = pred == c, target == c
        denom = p.sum() + t.sum()
        out.append(float(2.0 * (p & t).sum() / denom) if denom else float("nan"))
    return out


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
    dice = 1.0 - ((2 * inter + 1e-5) / (denom + 1e-5)).mean()
    return coef[0] * ce + coef[1] * dice


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", nargs="+", default=None, help="npz files with images/labels")
    ap.add_argument("--save_dir", required=True)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--max_minutes", type=float, default=60.0)
    ap.add_argument("--batch_size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--val_phantoms", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--checkpoint_only",
        action="store_true",
        help="only convert SAVE_DIR/latest.pt to model.pdparams (no training)",
    )
    args = ap.parse_args(argv)

    import torch

    from .samples import phantom_sample
    from .torch_vnet import TorchVNet, torch_state_to_paddle

    if not args.checkpoint_only and not args.pool:
        ap.error("--pool is required for training")
    if args.checkpoint_only:
        ck = torch.load(Path(args.save_dir) / "latest.pt", weights_only=False)
        save_pdparams(torch_state_to_paddle(ck["model"]), Path(args.save_dir) / "model.pdparams")
        print(f"iteration {ck['iter']}: wrote {Path(args.save_dir) / 'model.pdparams'}")
        return 0

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    save = Path(args.save_dir)
    save.mkdir(parents=True, exist_ok=True)
    images = np.concatenate([np.load(p)["images"] for p in args.pool])
    labels = np.concatenate([np.load(p)["labels"] for p in args.pool])
    model_shape = images.shape[2:]
    val = [phantom_sample(900_000 + i, model_shape) for i in range(args.val_phantoms)]
    val_x = np.stack([v[0] for v in val])
    val_y = np.stack([v[1] for v in val])

    model = TorchVNet(width=args.width, num_classes=3)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    it0 = 0
    elapsed0 = 0.0
    if args.resume and (save / "latest.pt").exists():
        ck = torch.load(save / "latest.pt", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        it0, elapsed0 = ck["iter"], ck["elapsed"]
    log = open(save / "train_log.jsonl", "a")
    budget = args.max_minutes * 60.0
    t0 = time.time() - elapsed0

    def to_input(u8):
        x = torch.from_numpy(u8.astype(np.float32))
        m = x.amax(dim=(1, 2, 3, 4), keepdim=True).clamp(min=1.0)
        return x / m  # client.preprocess.normalise_network_input

    def evaluate():
        model.eval()
        preds = []
        with torch.no_grad():
            for i in range(0, len(val_x), 4):
                preds.append(model(to_input(val_x[i : i + 4]))[0].argmax(1).numpy())
        model.train()
        return dice_per_class(np.concatenate(preds), val_y)

    it = it0
    losses = []
    while it < args.iters and time.time() - t0 < budget:
        progress = max(it / args.iters, (time.time() - t0) / budget)
        for g in opt.param_groups:
            g["lr"] = args.lr * (1.0 - min(progress, 0.999)) ** 0.9
        idx = rng.integers(0, len(images), size=args.batch_size)
        xb, yb = images[idx], labels[idx]
        # Random translation by a few voxels (no flips: orientation is canonical).
        shift = rng.integers(-4, 5, size=3)
        xb = np.roll(xb, shift, axis=(2, 3, 4))
        yb = np.roll(yb, shift, axis=(1, 2, 3))
        logits = model(to_input(xb))[0]
        loss = _mixed_loss(torch, logits, torch.from_numpy(yb.astype(np.int64)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        it += 1
        if it % 50 == 0:
            rec = {
                "iter": it,
                "loss": float(np.mean(losses[-50:])),
                "lr": opt.param_groups[0]["lr"],
                "elapsed_s": round(time.time() - t0, 1),
            }
            if it % 250 == 0:
                rec["val_dice_liver"], rec["val_dice_spleen"] = evaluate()
                torch.save(
                    {
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "iter": it,
                        "elapsed": time.time() - t0,
                    },
                    save / "latest.pt",
                )
            log.write(json.dumps(rec) + "\n")
            log.flush()
    d_liver, d_spleen = evaluate()
    torch.save(
        {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "iter": it,
            "elapsed": time.time() - t0,
        },
        save / "latest.pt",
    )
    state = torch_state_to_paddle(model.state_dict())
    np.savez(save / "model_paddle_names.npz", **state)
    save_pdparams(state, save / "model.pdparams")
    summary = {
        "iters": it,
        "wall_time_s": round(time.time() - t0, 1),
        "batch_size": args.batch_size,
        "width": args.width,
        "model_shape": list(model_shape),
        "pool_size": int(len(images)),
        "val_dice_model_size": {"liver": d_liver, "spleen": d_spleen},
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
    }
    (save / "train_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
