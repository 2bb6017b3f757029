"""Classic fine-tuning: the baseline of the core paper.

A linear classifier over the training classes is put on the backbone's features and
trained with cross-entropy on shuffled mini-batches, with the same optimiser, schedule,
augmentation and model selection (K-means cluster accuracy on the validation classes)
as the episodic method. The classifier is thrown away; the backbone is kept.
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import nn

from deepclust.methods.finetune.base import FineTuning


class ClassicFineTuning(FineTuning):
    """Fine-tuning with a linear classifier and cross-entropy; see the module docstring.

    An epoch is ``classic_images_per_epoch`` images (default: one pass over the
    training images), in mini-batches of ``batch_size``.
    """

    name = "classic"

    def make_head(self, n_classes: int, num_features: int) -> nn.Module:
        return nn.Linear(num_features, n_classes)

    def epoch_batches(self, labels: np.ndarray, epoch: int, rng: np.random.Generator) -> list[list[int]]:
        c = self.config
        n = len(labels)
        total = c.classic_images_per_epoch or n
        order = np.concatenate([rng.permutation(n) for _ in range(-(-total // n))])[:total]
        return [order[s: s + c.batch_size].tolist() for s in range(0, total, c.batch_size)]

    def batch_loss(self, features, head_out, labels):
        loss = F.cross_entropy(head_out, labels)
        return loss, {"CE": float(loss.detach())}
