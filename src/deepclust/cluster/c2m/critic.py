"""The Wasserstein critic on a clustering's embedding (MLP 256-256-512-512-1, LeakyReLU 0.2),
and its weight clipping."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Critic(nn.Module):
    """The metric's scoring function c_theta: an MLP 256-256-512-512-1 with LeakyReLU(0.2)
    (no activation on the output), trained as a Wasserstein GAN critic.

    With ``penalised > 0`` the last ``penalised`` inputs bypass the MLP and lower the score
    linearly with learned non-negative weights (``- softplus(w) . e[-penalised:]``): a
    shape constraint for features where less is always better (the structure features).
    A free MLP fitted to a few labelled sets can reward them in some range (overlapping
    true blobs cut some neighbour pairs) and then prefers cutting clusters it never saw.
    """

    def __init__(self, input_dim: int, widths=(256, 256, 512, 512), penalised: int = 0):
        super().__init__()
        self.net = None
        if input_dim > penalised:  # else: the score is the penalty alone
            layers, last = [], input_dim - penalised
            for w in widths:
                layers += [nn.Linear(last, w), nn.LeakyReLU(0.2)]
                last = w
            layers.append(nn.Linear(last, 1))
            self.net = nn.Sequential(*layers)
        self.penalised = penalised
        self.penalty = nn.Parameter(torch.zeros(penalised)) if penalised else None

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        free = e[..., :e.shape[-1] - self.penalised]
        score = self.net(free).squeeze(-1) if self.net is not None else e.new_zeros(e.shape[:-1])
        if self.penalised:
            score = score - (F.softplus(self.penalty) * e[..., -self.penalised:]).sum(-1)
        return score



def clip_weights(critic: Critic, clip: float = 0.01) -> None:
    """The original WGAN's Lipschitz constraint: every weight clipped to [-clip, clip]."""
    with torch.no_grad():
        for p in critic.parameters():
            p.clamp_(-clip, clip)
