"""Small networks for training from scratch (conv4, MMDC's VGG trunks), registered in timm.

Registering them with timm lets every part of deepclust build them by name through the
one backbone contract (:func:`deepclust.backbones.create_backbone`), like any timm model:
``create_backbone("conv4", weights="random")``.
"""

from __future__ import annotations

import torch
from torch import nn
from timm.layers import SelectAdaptivePool2d
from timm.models import generate_default_cfgs, register_model


def _conv_block(in_chs: int, out_chs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class _PooledConvNet(nn.Module):
    """Shared timm-style interface: ``blocks`` then global pooling then an optional classifier."""

    def __init__(self, blocks: nn.Sequential, num_features: int, num_classes: int = 0, global_pool: str = "avg"):
        super().__init__()
        self.blocks = blocks
        self.num_features = self.head_hidden_size = num_features
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.num_classes = num_classes
        self.classifier = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


class Conv4(_PooledConvNet):
    """The four-block convolutional network of few-shot learning (Vinyals et al., 2016;
    Snell et al., 2017): each block is 3x3 conv, batch norm, ReLU, 2x2 max-pool.

    On 28-pixel Omniglot images the output of the last block is 64 x 1 x 1; global
    average pooling makes the feature vector size-independent (``num_features`` =
    ``width``).
    """

    def __init__(self, in_chans: int = 3, width: int = 64, depth: int = 4, num_classes: int = 0,
                 global_pool: str = "avg", **kwargs):
        chans = [in_chans] + [width] * depth
        blocks = nn.Sequential(*[_conv_block(a, b) for a, b in zip(chans[:-1], chans[1:])])
        super().__init__(blocks, width, num_classes, global_pool)


def _vgg_block(in_chs: int, out_chs: int) -> nn.Sequential:
    layers = []
    for a, b in ((in_chs, out_chs), (out_chs, out_chs)):
        layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class VGGTrunk(_PooledConvNet):
    """The VGG-style network of MMDC (Shiran and Weinshall, 2020): blocks of two 3x3
    convolutions, each followed by batch norm and ReLU, ending in a 2x2 max-pool; three
    blocks for small images (MNIST, CIFAR), four for larger ones. Global average pooling
    gives a ``widths[-1]``-long feature vector. ``in_chans=2`` takes Sobel gradients.
    """

    def __init__(self, in_chans: int = 3, widths=(64, 128, 256), num_classes: int = 0,
                 global_pool: str = "avg", **kwargs):
        chans = [in_chans] + list(widths)
        blocks = nn.Sequential(*[_vgg_block(a, b) for a, b in zip(chans[:-1], chans[1:])])
        super().__init__(blocks, chans[-1], num_classes, global_pool)


default_cfgs = generate_default_cfgs({
    "conv4.untrained": {
        "input_size": (3, 28, 28), "pool_size": (1, 1), "crop_pct": 1.0, "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "classifier": "classifier", "num_classes": 0,
    },
    "mmdc_vgg3.untrained": {
        "input_size": (3, 32, 32), "pool_size": (4, 4), "crop_pct": 1.0, "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "classifier": "classifier", "num_classes": 0,
    },
    "mmdc_vgg4.untrained": {
        "input_size": (3, 96, 96), "pool_size": (6, 6), "crop_pct": 1.0, "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "classifier": "classifier", "num_classes": 0,
    },
})


def _untrained(name: str, model: nn.Module, pretrained: bool) -> nn.Module:
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights; build it with weights='random'")
    model.pretrained_cfg = model.default_cfg = dict(default_cfgs[name].default.to_dict())
    return model


def _own_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay")}


@register_model
def conv4(pretrained: bool = False, **kwargs) -> Conv4:
    """Conv-4, 64 channels, for 28-pixel inputs (Omniglot). No pretrained weights exist."""
    return _untrained("conv4", Conv4(**_own_kwargs(kwargs)), pretrained)


@register_model
def mmdc_vgg3(pretrained: bool = False, **kwargs) -> VGGTrunk:
    """MMDC's VGG trunk with three blocks (64, 128, 256 channels), for 28-32 px images."""
    return _untrained("mmdc_vgg3", VGGTrunk(widths=(64, 128, 256), **_own_kwargs(kwargs)), pretrained)


@register_model
def mmdc_vgg4(pretrained: bool = False, **kwargs) -> VGGTrunk:
    """MMDC's VGG trunk with four blocks (64, 128, 256, 512 channels), for larger images."""
    return _untrained("mmdc_vgg4", VGGTrunk(widths=(64, 128, 256, 512), **_own_kwargs(kwargs)), pretrained)
