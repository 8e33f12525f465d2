"""MedicalSeg-compatible VNet in PaddlePaddle.

Layer and parameter names follow MedicalSeg's ``medicalseg/models/vnet.py`` so
that its ``model.pdparams`` checkpoints load (``in_tr.conv1.weight``,
``down_tr32.down_conv.weight``, ``down_tr64.ops.1.conv1.weight``,
``up_tr256.up_conv.weight``, ``out_tr.conv2.weight``, BN ``_mean``/``_variance``,
PReLU ``relu1._weight``). As in the fatty-liver project's config, the down
convolutions take per-stage ``kernel_size``/``stride_size`` (no padding) and the
transposed up convolutions use the same lists in reverse, so anisotropic
kernels such as ``[2, 2, 4]`` with stride ``[2, 2, 1]`` map 128^3 back to 128^3.

``width`` scales every channel count (1.0 = MedicalSeg's 16-32-64-128-256), which
makes CPU-sized variants; names and the layer structure do not change.
"""

from __future__ import annotations

import paddle
import paddle.nn as nn

ORIGINAL_KERNEL_SIZE = [[2, 2, 4], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
ORIGINAL_STRIDE_SIZE = [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]]


def _act(elu: bool, n: int):
    return nn.ELU() if elu else nn.PReLU(n)


class LUConv(nn.Layer):
    """5x5x5 conv + BN + PReLU (or ELU)."""

    def __init__(self, nchan: int, elu: bool):
        super().__init__()
        self.relu1 = _act(elu, nchan)
        self.conv1 = nn.Conv3D(nchan, nchan, kernel_size=5, padding=2)
        self.bn1 = nn.BatchNorm3D(nchan)

    def forward(self, x):
        return self.relu1(self.bn1(self.conv1(x)))


def _make_nconv(nchan: int, depth: int, elu: bool):
    return nn.Sequential(*[LUConv(nchan, elu) for _ in range(depth)])


class InputTransition(nn.Layer):
    """5x5x5 conv to ``num_features`` channels, BN, plus the input tiled, PReLU."""

    def __init__(self, in_channels: int, num_features: int, elu: bool):
        super().__init__()
        self.num_features = num_features
        self.in_channels = in_channels
        self.conv1 = nn.Conv3D(in_channels, num_features, kernel_size=5, padding=2)
        self.bn1 = nn.BatchNorm3D(num_features)
        self.relu1 = _act(elu, num_features)

    def forward(self, x):
        out = self.bn1(self.conv1(x))
        repeat = self.num_features // self.in_channels
        return self.relu1(paddle.add(out, x.tile([1, repeat, 1, 1, 1])))


class DownTransition(nn.Layer):
    """Strided down conv (no padding) + BN + PReLU, nConvs LUConvs, residual add."""

    def __init__(self, in_chans, n_convs, elu, kernel_size, stride, dropout=False):
        super().__init__()
        out_chans = 2 * in_chans
        self.if_dropout = dropout
        self.down_conv = nn.Conv3D(in_chans, out_chans, kernel_size=kernel_size, stride=stride)
        self.bn1 = nn.BatchNorm3D(out_chans)
        self.relu1 = _act(elu, out_chans)
        self.relu2 = _act(elu, out_chans)
        self.dropout = nn.Dropout3D()
        self.ops = _make_nconv(out_chans, n_convs, elu)

    def forward(self, x):
        down = self.relu1(self.bn1(self.down_conv(x)))
        out = self.dropout(down) if self.if_dropout else down
        out = self.ops(out)
        return self.relu2(paddle.add(out, down))


class UpTransition(nn.Layer):
    """Transposed conv to outChans/2, concat with the skip, nConvs LUConvs, residual add."""

    def __init__(
        self, in_chans, out_chans, n_convs, elu, kernel_size, stride, dropout=False, dropout2=False
    ):
        super().__init__()
        self.up_conv = nn.Conv3DTranspose(
            in_chans, out_chans // 2, kernel_size=kernel_size, stride=stride
        )
        self.bn1 = nn.BatchNorm3D(out_chans // 2)
        self.relu1 = _act(elu, out_chans // 2)
        self.relu2 = _act(elu, out_chans)
        self.if_dropout = dropout
        self.if_dropout2 = dropout2
        self.dropout1 = nn.Dropout3D()
        self.dropout2 = nn.Dropout3D()
        self.ops = _make_nconv(out_chans, n_convs, elu)

    def forward(self, x, skipx):
        out = self.dropout1(x) if self.if_dropout else x
        skipx = self.dropout2(skipx) if self.if_dropout2 else skipx
        out = self.relu1(self.bn1(self.up_conv(out)))
        xcat = paddle.concat((out, skipx), 1)
        out = self.ops(xcat)
        return self.relu2(paddle.add(out, xcat))


class OutputTransition(nn.Layer):
    """5x5x5 conv to classes + BN + PReLU, then a 1x1x1 conv (logits)."""

    def __init__(self, in_channels, num_classes, elu):
        super().__init__()
        self.conv1 = nn.Conv3D(in_channels, num_classes, kernel_size=5, padding=2)
        self.bn1 = nn.BatchNorm3D(num_classes)
        self.conv2 = nn.Conv3D(num_classes, num_classes, kernel_size=1)
        self.relu1 = _act(elu, num_classes)

    def forward(self, x):
        return self.conv2(self.relu1(self.bn1(self.conv1(x))))


class VNet(nn.Layer):
    """MedicalSeg's VNet with per-stage kernel/stride lists and a width multiplier.

    Parameters
    ----------
    elu : bool
        ELU instead of per-channel PReLU.
    in_channels : int
        Input channels (1 for CT).
    num_classes : int
        Output classes (3: background, liver, spleen).
    kernel_size, stride_size : list of 4 lists of 3 ints
        Down-conv kernels and strides per stage ``[z, y, x]``; the up path uses them
        in reverse. Default: isotropic 2 / 2 (MedicalSeg's plain VNet).
    width : float
        Channel multiplier (1.0: 16-32-64-128-256). Must keep channels even.
    pretrained : str, optional
        Path of a ``model.pdparams`` to load (names and shapes checked).

    ``forward`` returns ``[logits]`` as MedicalSeg does.
    """

    def __init__(
        self,
        elu=False,
        in_channels=1,
        num_classes=3,
        kernel_size=None,
        stride_size=None,
        width=1.0,
        pretrained=None,
    ):
        super().__init__()
        kernel_size = kernel_size or [[2, 2, 2]] * 4
        stride_size = stride_size or [[2, 2, 2]] * 4
        if len(kernel_size) != 4 or len(stride_size) != 4:
            raise ValueError(
                f"expected 4 kernel_size and 4 stride_size entries, got {len(kernel_size)} and {len(stride_size)}"
            )
        base = int(round(16 * width))
        if base < in_channels or base % in_channels or base % 2:
            raise ValueError(
                f"width {width} gives {base} base channels; need an even multiple of in_channels={in_channels}"
            )
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.kernel_size = [list(k) for k in kernel_size]
        self.stride_size = [list(s) for s in stride_size]
        self.width = width
        k, s = self.kernel_size, self.stride_size
        c = [base * 2**i for i in range(5)]  # 16, 32, 64, 128, 256 at width 1
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
        if pretrained:
            load_pretrained(self, pretrained)

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


def load_pretrained(model: nn.Layer, path: str) -> None:
    """Load a MedicalSeg ``model.pdparams`` into ``model``, checking names and shapes.

    Raises
    ------
    ValueError
        Naming the missing, unexpected and mis-shaped parameters.
    """
    state = paddle.load(str(path))
    check_state_dict(model, state, source=str(path))
    model.set_state_dict(state)


def check_state_dict(model: nn.Layer, state: dict, source: str = "state dict") -> None:
    """Raise ``ValueError`` unless ``state`` has exactly ``model``'s names and shapes."""
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    got = {k: list(v.shape) for k, v in state.items()}
    missing = sorted(set(own) - set(got))
    unexpected = sorted(set(got) - set(own))
    bad = sorted(
        f"{k}: expected {own[k]}, got {got[k]}" for k in set(own) & set(got) if own[k] != got[k]
    )
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[:3]})")
        if bad:
            parts.append(f"wrong shapes {len(bad)} (e.g. {bad[:3]})")
        raise ValueError(
            f"{source} does not match the VNet (width {getattr(model, 'width', '?')}, "
            f"kernel_size {getattr(model, 'kernel_size', '?')}): " + "; ".join(parts)
        )
