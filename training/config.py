"""MedicalSeg-format YAML configs: load (with ``_base_``), build the VNet, read sizes."""

from __future__ import annotations

from pathlib import Path

import yaml

from client.core.contract import ORIGINAL_MODEL_SHAPE

_MODEL_KEYS = {
    "elu",
    "in_channels",
    "num_classes",
    "kernel_size",
    "stride_size",
    "width",
    "pretrained",
}


def load_config(path: str | Path) -> dict:
    """Read a MedicalSeg YAML config, merging ``_base_`` files recursively.

    Raises
    ------
    ValueError
        If the file is not a mapping or its model is not a VNet.
    """
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read YAML config ({exc})") from exc
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(cfg).__name__}")
    base = cfg.pop("_base_", None)
    if base:
        merged = load_config(path.parent / base)
        cfg = _merge(merged, cfg)
    model = cfg.get("model", {})
    if model.get("type", "VNet") != "VNet":
        raise ValueError(f"{path}: expected model.type VNet, got {model.get('type')!r}")
    return cfg


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def model_kwargs(cfg: dict) -> dict:
    """VNet constructor arguments from ``cfg['model']`` (unknown keys rejected)."""
    model = dict(cfg.get("model", {}))
    model.pop("type", None)
    unknown = set(model) - _MODEL_KEYS
    if unknown:
        raise ValueError(f"unknown VNet options in config: {sorted(unknown)}")
    return model


def build_model(cfg: dict, pretrained: str | Path | None = None):
    """Build the Paddle VNet of a config; ``pretrained`` overrides ``model.pretrained``."""
    from .vnet import VNet

    kw = model_kwargs(cfg)
    if pretrained is not None:
        kw["pretrained"] = str(pretrained)
    return VNet(**kw)


def model_shape_of(cfg: dict) -> tuple[int, int, int]:
    """Spatial input size: ``model_shape`` (our extension) or MedicalSeg's 128^3."""
    shape = cfg.get("model_shape", ORIGINAL_MODEL_SHAPE)
    if len(shape) != 3 or min(int(s) for s in shape) < 8:
        raise ValueError(f"model_shape must be three ints >= 8, got {shape}")
    return tuple(int(s) for s in shape)


def preprocess_spec_of(cfg: dict):
    """The served preprocessing a config trains for (our extension), a
    :class:`client.reading.preprocess.PreprocessSpec`: ``preprocess: {mode: spacing,
    spacing_mm: [z, y, x]}`` (the shipped model's kind) or ``{mode: resize}`` (the
    default: MedicalSeg's whole-volume resize), at :func:`model_shape_of`."""
    from client.reading.preprocess import PreprocessSpec

    pre = dict(cfg.get("preprocess") or {})
    unknown = set(pre) - {"mode", "spacing_mm"}
    if unknown:
        raise ValueError(f"unknown preprocess options in config: {sorted(unknown)}")
    mode = str(pre.get("mode", "resize"))
    spacing = pre.get("spacing_mm")
    return PreprocessSpec(
        mode, model_shape_of(cfg), tuple(float(v) for v in spacing) if spacing else None
    )
