"""A layer as a user writes it: an MLP with a learnable per-unit output scale, in plain torch.

    gaugemath discover --torch examples/modules/scaled_mlp.py:ScaledMLP --loss cross_entropy

``ScaledMLP(d, h, c)`` computes ``W2 (s ⊙ relu(W1 x + b1)) + b2``. By hand: unit ``k`` rescales as
``(W1[k], b1[k]) × α`` with ``s_k × α^-1`` and as ``s_k × β`` with ``W2[:, k] × β^-1``, and cross-entropy adds
the logit shift (``W2[:, k] + v``, ``b2 + v``): ``3h + 1`` generators.
"""

import torch
from torch import nn

WIDTHS = [dict(h=2), dict(h=3)]


class ScaledMLP(nn.Module):
    def __init__(self, d: int = 2, h: int = 2, c: int = 3):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, c)
        self.s = nn.Parameter(torch.rand(h) + 0.5)

    def forward(self, x):
        return self.fc2(self.s * torch.relu(self.fc1(x)))


def example(model: ScaledMLP):
    return (torch.randn(1, model.fc1.in_features),)
