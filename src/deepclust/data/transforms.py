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


def sobel(images):
    """Sobel pre-processing of unsupervised clustering (NAT, DeepCluster, IIC, MMDC): the
    grey level of each image, then its horizontal and vertical Sobel gradients, so that
    a network cannot group images by colour alone.

    Parameters
    ----------
    images : Tensor of shape (B, C, H, W)

    Returns
    -------
    Tensor of shape (B, 2, H, W): the x and y gradients (zero padding at the border).
    """
    import torch
    import torch.nn.functional as F

    grey = images.mean(dim=1, keepdim=True)
    gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=images.dtype, device=images.device)
    kernels = torch.stack([gx, gx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
    return F.conv2d(grey, kernels, padding=1)


def rotations(images):
    """RotNet's auxiliary task (Gidaris et al., 2018): every image at 0, 90, 180 and 270
    degrees (counter-clockwise).

    Parameters
    ----------
    images : Tensor of shape (B, C, H, W) with H == W

    Returns
    -------
    rotated : Tensor of shape (4B, C, H, W)
        All images at 0 degrees, then all at 90, 180, 270.
    labels : LongTensor of shape (4B,)
        0, 1, 2, 3: the rotation of each row.
    """
    import torch

    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotations need square images; got {tuple(images.shape[-2:])}")
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
    labels = torch.arange(4, device=images.device).repeat_interleave(len(images))
    return rotated, labels
