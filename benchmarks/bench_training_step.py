"""Benchmark: one training step of the demo VNet on this CPU, Paddle vs the PyTorch twin.

``python benchmarks/bench_training_step.py [--steps 3] [--size 64] [--width 0.25]``

Same model (quarter-width VNet, 2x2x2 down/up convs), same batch (2 x 1 x 64^3),
same MixedLoss, SGD step, measured in one run:

* Paddle eager (dygraph), the baseline;
* Paddle with ``paddle.jit.to_static`` on the forward (static-graph execution);
* Paddle eager with ``FLAGS_use_mkldnn`` (oneDNN kernels, which make Paddle
  Inference fast on this CPU);
* the PyTorch twin (``training/torch_vnet.py``), if torch is installed (``cputrain`` extra).

This is why the shipped demo model was trained with the PyTorch twin.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, save_result  # noqa: E402


def _time_steps(step, n):
    step()  # warm-up (graph build, allocations)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def paddle_step(size, width, static: bool):
    import paddle

    from training.train import mixed_loss
    from training.vnet import VNet

    paddle.seed(0)
    net = VNet(width=width)
    fwd = paddle.jit.to_static(net) if static else net
    opt = paddle.optimizer.Momentum(learning_rate=0.01, momentum=0.9, parameters=net.parameters())
    x = paddle.rand([2, 1, size, size, size])
    y = paddle.to_tensor(np.random.default_rng(0).integers(0, 3, (2, size, size, size)))

    def step():
        loss = mixed_loss(fwd(x)[0], y, 3)
        loss.backward()
        opt.step()
        opt.clear_grad()

    return step


def torch_step(size, width):
    import torch

    from training.demo_train import _mixed_loss
    from training.torch_vnet import TorchVNet

    torch.manual_seed(0)
    net = TorchVNet(width=width, num_classes=3)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(2, 1, size, size, size)
    y = torch.from_numpy(np.random.default_rng(0).integers(0, 3, (2, size, size, size)))

    def step():
        loss = _mixed_loss(torch, net(x)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    import paddle

    res = {
        "machine": machine_info(paddle=paddle.__version__),
        "input": [2, 1, args.size, args.size, args.size],
        "width": args.width,
        "seconds_per_step": {},
    }
    s = res["seconds_per_step"]
    s["paddle_eager (baseline)"] = round(
        _time_steps(paddle_step(args.size, args.width, False), args.steps), 2
    )
    try:
        s["paddle_to_static"] = round(
            _time_steps(paddle_step(args.size, args.width, True), args.steps), 2
        )
    except Exception as exc:  # noqa: BLE001 - report it
        s["paddle_to_static"] = f"failed: {str(exc)[:200]}"
    paddle.set_flags({"FLAGS_use_mkldnn": True})
    s["paddle_eager_use_mkldnn"] = round(
        _time_steps(paddle_step(args.size, args.width, False), args.steps), 2
    )
    paddle.set_flags({"FLAGS_use_mkldnn": False})
    try:
        import torch

        res["machine"]["torch"] = torch.__version__
        s["torch_twin"] = round(_time_steps(torch_step(args.size, args.width), args.steps), 2)
    except ImportError:
        s["torch_twin"] = "torch not installed (pip install -e '.[cputrain]')"
    base = s["paddle_eager (baseline)"]
    res["speedup_vs_paddle_eager"] = {
        k: round(base / v, 2) for k, v in s.items() if isinstance(v, float)
    }
    save_result(res, args.out, "training_step.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
