"""Small networks for training from scratch, registered in timm's model registry.

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


class Conv4(nn.Module):
    """The four-block convolutional network of few-shot learning (Vinyals et al., 2016;
    Snell et al., 2017): each block is 3x3 conv, batch norm, ReLU, 2x2 max-pool.

    On 28-pixel Omniglot images the output of the last block is 64 x 1 x 1; global
    average pooling makes the feature vector size-independent (``num_features`` =
    ``width``).
    """

    def __init__(self, in_chans: int = 3, width: int = 64, depth: int = 4, num_classes: int = 0,
                 global_pool: str = "avg", **kwargs):
        super().__init__()
        chans = [in_chans] + [width] * depth
        self.blocks = nn.Sequential(*[_conv_block(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.num_features = self.head_hidden_size = width
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.num_classes = num_classes
        self.classifier = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

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


default_cfgs = generate_default_cfgs({
    "conv4.untrained": {
        "input_size": (3, 28, 28), "pool_size": (1, 1), "crop_pct": 1.0, "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "classifier": "classifier", "num_classes": 0,
    },
})


@register_model
def conv4(pretrained: bool = False, **kwargs) -> Conv4:
    """Conv-4, 64 channels, for 28-pixel inputs (Omniglot). No pretrained weights exist."""
    if pretrained:
        raise ValueError("conv4 has no pretrained weights; build it with weights='random'")
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    model = Conv4(**kwargs)
    model.pretrained_cfg = model.default_cfg = dict(default_cfgs["conv4"].default.to_dict())
    return model
