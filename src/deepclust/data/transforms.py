"""Image transforms for training, built by timm from the backbone's own data config."""

from __future__ import annotations

from timm.data import create_transform


def training_transform(data_config: dict, scale: tuple[float, float] = (0.6, 1.0), hflip: float = 0.5,
                       color_jitter: float = 0.3):
    """Augmentation of the core paper: random scaling (resized crop), horizontal flip and
    colour jitter of brightness, contrast and saturation; then the backbone's own
    normalisation. ``hflip=0`` and ``color_jitter=0`` turn those parts off (characters,
    digits)."""
    return create_transform(
        **data_config,
        is_training=True,
        scale=tuple(scale),
        ratio=(3 / 4, 4 / 3),
        hflip=hflip,
        vflip=0.0,
        color_jitter=float(color_jitter) if color_jitter else None,
        auto_augment=None,
        re_prob=0.0,
    )


def eval_transform(data_config: dict):
    """The backbone's own evaluation preprocessing (resize, centre crop, normalise)."""
    return create_transform(**data_config, is_training=False)
