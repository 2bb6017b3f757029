"""Episodic fine-tuning with the multivariate scatter loss (the core method).

Bjerge, Bodesheim and Karstoft, "Deep Image Clustering with Model-Agnostic
Meta-Learning", VISAPP 2025. A pretrained backbone is fine-tuned on few-shot tasks
drawn from labelled training classes: every task is an N-way K-shot support set and Q
queries per class; a Prototypical Network (Snell et al., 2017) classifies the queries by
their Euclidean distance to the mean support embedding of each class (eq. 2), and the
multivariate scatter loss (eq. 1) pulls the support embeddings of a class together and
pushes the class means apart. The loss is ``alpha * Lm + (1 - alpha) * Lc`` (eq. 3).
After every epoch the validation classes are clustered with K-means and the epoch with
the best cluster accuracy is kept; unseen test classes are then clustered with the
embeddings of that backbone.

Deliberate choices: ``Lm`` is computed on the support embeddings, as the paper states
(eq. 1: "X_n ... each sample in the support set"), with the paper's sums (no division by
the number of samples or of class pairs); its denominator is bounded below so that
coinciding class means cannot give ``inf``. Distances are Euclidean, not squared (eq. 2).
"""

from __future__ import annotations

import numpy as np
import torch

from deepclust.data.samplers import EpisodeSampler, episode_labels
from deepclust.losses import prototypical_loss, scatter_loss
from deepclust.methods.finetune.base import FineTuning


class EpisodicFineTuning(FineTuning):
    """Few-shot episodic fine-tuning with the multivariate scatter loss; see the module docstring."""

    name = "episodic"

    def check_config(self, n_train: int, train_labels: np.ndarray) -> None:
        c = self.config
        # raises, before any heavy work, when the classes are too few or too small
        EpisodeSampler(train_labels, c.n_way, c.n_shot, c.n_query, c.n_tasks)

    def epoch_batches(self, labels: np.ndarray, epoch: int, rng: np.random.Generator) -> list[list[int]]:
        c = self.config
        sampler = EpisodeSampler(labels, c.n_way, c.n_shot, c.n_query, c.n_tasks, random_state=rng)
        return list(sampler)

    def batch_loss(self, features, head_out, labels):
        c = self.config
        n_support = c.n_way * c.n_shot
        ys, yq = (torch.as_tensor(y, device=features.device) for y in episode_labels(c.n_way, c.n_shot, c.n_query))
        support, query = features[:n_support], features[n_support:]
        lc = prototypical_loss(support, ys, query, yq) if c.n_query > 0 else features.new_zeros(())
        lm = scatter_loss(support, ys)
        loss = c.alpha * lm + (1.0 - c.alpha) * lc
        return loss, {"Lc": float(lc.detach()), "Lm": float(lm.detach())}
