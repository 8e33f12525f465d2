"""A PyTorch twin of :class:`training.vnet.VNet`, used only to train faster on CPU.

Why: PaddlePaddle 3.3's CPU Conv3D runs about 8x slower than PyTorch's oneDNN
Conv3D on this machine type (quarter-width VNet, 64^3, batch 2: ~10 s vs ~1.3 s
per training step; ``benchmarks/results/training.md``). The twin has the same
layers, the same attribute names and the same weight layouts, so its state dict
converts one-to-one into a MedicalSeg/Paddle ``model.pdparams``
(:func:`torch_state_to_paddle`); the Paddle VNet then runs, is checked against the
twin and is exported through paddle.jit + paddle2onnx as usual. Paddle stays the
model of record; the twin is optional (``pip install torch``) and never served.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


def _act(elu: bool, n: int):
    return nn.ELU() if elu else nn.PReLU(n)


class LUConv(nn.Module):
    def __init__(self, nchan, elu):
        super().__init__()
        self.relu1 = _act(elu, nchan)
        self.conv1 = nn.Conv3d(nchan, nchan, kernel_size=5, padding=2)
        self.bn1 = nn.BatchNorm3d(nchan)

    def forward(self, x):
        return self.relu1(self.bn1(self.conv1(x)))


class InputTransition(nn.Module):
    def __init__(self, in_channels, num_features, elu):
        super().__init__()
        self.num_features = num_features
        self.in_channels = in_channels
        self.conv1 = nn.Conv3d(in_channels, num_features, kernel_size=5, padding=2)
        self.bn1 = nn.BatchNorm3d(num_features)
        self.relu1 = _act(elu, num_features)

    def forward(self, x):
        out = self.bn1(self.conv1(x))
        return self.relu1(out + x.repeat(1, self.num_features // self.in_channels, 1, 1, 1))


class DownTransition(nn.Module):
    def __init__(self, in_chans, n_convs, elu, kernel_size, stride, dropout=False):
        super().__init__()
        out_chans = 2 * in_chans
        self.if_dropout = dropout
        self.down_conv = nn.Conv3d(in_chans, out_chans, kernel_size=kernel_size, stride=stride)
        self.bn1 = nn.BatchNorm3d(out_chans)
        self.relu1 = _act(elu, out_chans)
        self.relu2 = _act(elu, out_chans)
        self.dropout = nn.Dropout3d()
        self.ops = nn.Sequential(*[LUConv(out_chans, elu) for _ in range(n_convs)])

    def forward(self, x):
        down = self.relu1(self.bn1(self.down_conv(x)))
        out = self.dropout(down) if self.if_dropout else down
        return self.relu2(self.ops(out) + down)


class UpTransition(nn.Module):
    def __init__(
        self, in_chans, out_chans, n_convs, elu, kernel_size, stride, dropout=False, dropout2=False
    ):
        super().__init__()
        self.up_conv = nn.ConvTranspose3d(
            in_chans, out_chans // 2, kernel_size=kernel_size, stride=stride
        )
        self.bn1 = nn.BatchNorm3d(out_chans // 2)
        self.relu1 = _act(elu, out_chans // 2)
        self.relu2 = _act(elu, out_chans)
        self.if_dropout = dropout
        self.if_dropout2 = dropout2
        self.dropout1 = nn.Dropout3d()
        self.dropout2 = nn.Dropout3d()
        self.ops = nn.Sequential(*[LUConv(out_chans, elu) for _ in range(n_convs)])

    def forward(self, x, skipx):
        out = self.dropout1(x) if self.if_dropout else x
        skipx = self.dropout2(skipx) if self.if_dropout2 else skipx
        out = self.relu1(self.bn1(self.up_conv(out)))
        xcat = torch.cat((out, skipx), 1)
        return self.relu2(self.ops(xcat) + xcat)


class OutputTransition(nn.Module):
    def __init__(self, in_channels, num_classes, elu):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, num_classes, kernel_size=5, padding=2)
        self.bn1 = nn.BatchNorm3d(num_classes)
        self.conv2 = nn.Conv3d(num_classes, num_classes, kernel_size=1)
        self.relu1 = _act(elu, num_classes)

    def forward(self, x):
        return self.conv2(self.relu1(self.bn1(self.conv1(x))))


class TorchVNet(nn.Module):
    """Same constructor arguments and layer names as :class:`training.vnet.VNet`."""

    def __init__(
        self, elu=False, in_channels=1, num_classes=3, kernel_size=None, stride_size=None, width=1.0
    ):
        super().__init__()
        k = kernel_size or [[2, 2, 2]] * 4
        s = stride_size or [[2, 2, 2]] * 4
        base = int(round(16 * width))
        c = [base * 2**i for i in range(5)]
        self.in_tr = InputTransition(in_channels, c[0], elu)
        self.down_tr32 = DownTransition(c[0], 1, elu, k[0], s[0])
        self.down_tr64 = DownTransition(c[1], 2, elu, k[1], s[1])
        self.down_tr128 = DownTransition(c[2], 3, elu, k[2], s[2], dropout=True)
        self.down_tr256 = DownTransition(c[3], 2, elu, k[3], s[3], dropout=True)
        self.up_tr256 = UpTransition(c[4], c[4], 2, elu, k[3], s[3], dropout=True, dropout2=True)
        self.up_tr128 = UpTransition(c[4], c[3], 2, elu, k[2], s[2], dropout=True, dropout2=True)
        self.up_tr64 = UpTransition(c[3], c[2], 1, elu, k[1], s[1])
        self.up_tr32 = UpTransition(c[2], c[1], 1, elu, k[0], s[0])
        self.out_tr = OutputTransition(c[1], num_classes, elu)

    def forward(self, x):
        out16 = self.in_tr(x)
        out32 = self.down_tr32(out16)
        out64 = self.down_tr64(out32)
        out128 = self.down_tr128(out64)
        out256 = self.down_tr256(out128)
        out = self.up_tr256(out256, out128)
        out = self.up_tr128(out, out64)
        out = self.up_tr64(out, out32)
        out = self.up_tr32(out, out16)
        return [self.out_tr(out)]


def torch_state_to_paddle(state: dict) -> dict[str, np.ndarray]:
    """Rename a TorchVNet state dict to MedicalSeg/Paddle names (float32 numpy arrays).

    BatchNorm ``running_mean``/``running_var`` become ``_mean``/``_variance``, PReLU
    ``weight`` becomes ``_weight``, ``num_batches_tracked`` is dropped; conv and
    transposed-conv weights share their layout in both frameworks.
    """
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        name = key
        if key.endswith(".running_mean"):
            name = key[: -len("running_mean")] + "_mean"
        elif key.endswith(".running_var"):
            name = key[: -len("running_var")] + "_variance"
        elif key.split(".")[-2].startswith("relu") and key.endswith(".weight"):
            name = key[: -len("weight")] + "_weight"
        out[name] = value.detach().cpu().numpy().astype(np.float32)
    return out
