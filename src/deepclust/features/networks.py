"""Small networks for small images (conv4, MMDC's VGG trunks, CIFAR ResNets, a small-stem
ResNet-18), registered in timm.

Registering them with timm lets every part of deepclust build them by name through the
one backbone contract (:func:`deepclust.features.backbones.create_backbone`), like any timm model:
``create_backbone("conv4", weights="random")``.
"""

from __future__ import annotations

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models import generate_default_cfgs, register_model
from torch import nn


def _conv_block(in_chs: int, out_chs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class _PooledConvNet(nn.Module):
    """Shared timm-style interface: ``forward_features`` (by default ``blocks``), then global
    pooling, then an optional linear classifier stored under ``classifier_name``."""

    classifier_name = "classifier"

    def _init_head(self, num_features: int, num_classes: int = 0, global_pool: str = "avg") -> None:
        self.num_features = self.head_hidden_size = num_features
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.num_classes = num_classes
        setattr(self, self.classifier_name, nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self._init_head(self.num_features, num_classes, global_pool)


class _BasicBlock(nn.Module):
    """He et al.'s CIFAR basic block with the parameter-free "option A" shortcut: when the
    block halves the resolution, the identity is subsampled and zero-padded in channels."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.stride, self.pad = stride, out_chs - in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.pad:
            shortcut = nn.functional.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return torch.relu(out + shortcut)


class CifarResNet(_PooledConvNet):
    """The CIFAR ResNet of He et al. (2016, section 4.2): a 3x3 stem of 16 channels, three
    stages of ``depth`` basic blocks (16, 32, 64 channels, the last two halving the
    resolution), global average pooling to 64 features. ResNet-20/32/44/56 have
    ``depth`` 3/5/7/9. Parameter names match the widely used checkpoints of
    akamaster/pytorch_resnet_cifar10 (``conv1``, ``bn1``, ``layerN``, ``linear``), so
    ``--weights resnet20-12fca82f.th`` loads them.
    """

    classifier_name = "linear"

    def __init__(self, depth: int = 3, in_chans: int = 3, num_classes: int = 0, global_pool: str = "avg",
                 widths=(16, 32, 64), **kwargs):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        chans = [widths[0]] + list(widths)
        for i in range(3):
            blocks = [_BasicBlock(chans[i] if j == 0 else chans[i + 1], chans[i + 1], 2 if (i > 0 and j == 0) else 1)
                      for j in range(depth)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self._init_head(widths[-1], num_classes, global_pool)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


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
        super().__init__()
        self.blocks = nn.Sequential(*[_conv_block(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self._init_head(width, num_classes, global_pool)


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
        super().__init__()
        self.blocks = nn.Sequential(*[_vgg_block(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self._init_head(chans[-1], num_classes, global_pool)


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
    **{f"cifar_resnet{d}.untrained": {
        "input_size": (3, 32, 32), "pool_size": (8, 8), "crop_pct": 1.0, "interpolation": "bilinear",
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "classifier": "linear", "num_classes": 0,
    } for d in (20, 32, 44, 56)},
    "cifar_resnet18.untrained": {
        "input_size": (3, 32, 32), "pool_size": (4, 4), "crop_pct": 1.0, "interpolation": "bilinear",
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "classifier": "fc", "num_classes": 0,
    },
})


def _untrained(name: str, model: nn.Module, pretrained: bool) -> nn.Module:
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights; build it with weights='random'")
    model.pretrained_cfg = model.default_cfg = dict(default_cfgs[name].default.to_dict())
    return model


def _own_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}


@register_model
def conv4(pretrained: bool = False, **kwargs) -> Conv4:
    """Conv-4, 64 channels, for 28-pixel inputs (Omniglot). No pretrained weights exist."""
    return _untrained("conv4", Conv4(**_own_kwargs(kwargs)), pretrained)


@register_model
def mmdc_vgg3(pretrained: bool = False, **kwargs) -> VGGTrunk:
    """MMDC's VGG trunk with three blocks (64, 128, 256 channels), for 28-32 px images."""
    kwargs.setdefault("widths", (64, 128, 256))
    return _untrained("mmdc_vgg3", VGGTrunk(**_own_kwargs(kwargs)), pretrained)


@register_model
def mmdc_vgg4(pretrained: bool = False, **kwargs) -> VGGTrunk:
    """MMDC's VGG trunk with four blocks (64, 128, 256, 512 channels), for larger images."""
    kwargs.setdefault("widths", (64, 128, 256, 512))
    return _untrained("mmdc_vgg4", VGGTrunk(**_own_kwargs(kwargs)), pretrained)


def _cifar_resnet(depth: int, pretrained: bool, kwargs: dict) -> CifarResNet:
    name = f"cifar_resnet{6 * depth + 2}"
    return _untrained(name, CifarResNet(depth=depth, **_own_kwargs(kwargs)), pretrained)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20 (0.27M parameters, 64 features) for 32-px images; weights from a file."""
    return _cifar_resnet(3, pretrained, kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-32 (0.46M parameters, 64 features) for 32-px images; weights from a file."""
    return _cifar_resnet(5, pretrained, kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-44 (0.66M parameters, 64 features) for 32-px images; weights from a file."""
    return _cifar_resnet(7, pretrained, kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-56 (0.85M parameters, 64 features) for 32-px images; weights from a file."""
    return _cifar_resnet(9, pretrained, kwargs)


@register_model
def cifar_resnet18(pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNet-18 (11M parameters, 512 features) with the small-input stem of SimCLR, SwAV
    and IMC-SwAV on 32-px images: a 3x3 stride-1 first convolution and no max-pool, so
    the last stage still sees 4x4 positions. timm's own ResNet otherwise."""
    from timm.models.resnet import BasicBlock, ResNet

    own = _own_kwargs(kwargs)
    in_chans = own.get("in_chans", 3)
    model = ResNet(BasicBlock, (2, 2, 2, 2), **own)
    model.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return _untrained("cifar_resnet18", model, pretrained)
