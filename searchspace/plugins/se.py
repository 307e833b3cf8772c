"""Squeeze-and-Excitation (Hu et al., 2018). Formulas and sources: docs/modules.md."""

import torch.nn.functional as F
from torch import nn

from .forms import counting
from .registry import BLOCK_POSITIONS, register


class SqueezeExcite(nn.Module):
    """GAP -> 1x1 conv C->C/r (bias) -> ReLU -> 1x1 conv C/r->C (bias) -> sigmoid gate.

    Params 2C^2/r + C/r + C. AdaptiveAvgPool2d (not .mean) so fvcore counts the squeeze like mmpretrain.
    """

    def __init__(self, channels: int, r: int = 16):
        super().__init__()
        hidden = max(channels // r, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        if counting():
            return x * self.fc2(self.act(self.fc1(self.pool(x)))).sigmoid()
        # The same numbers with the convs as matrix products on the pooled vector (a conv's backward on
        # a 1x1 map is several times slower on CPU) and the mean's 1/HW folded into fc1's weight (the
        # backward of a sum is a broadcast, of a mean a division pass over the map).
        h, w = x.shape[-2:]
        s = F.linear(x.sum((2, 3)), self.fc1.weight.flatten(1) / (h * w), self.fc1.bias)
        gate = F.linear(self.act(s), self.fc2.weight.flatten(1), self.fc2.bias).sigmoid()
        return x * gate[:, :, None, None]


@register("se", positions=BLOCK_POSITIONS)
def se(channels, r, site):
    """Squeeze-and-Excitation channel gate."""
    return SqueezeExcite(channels, r)
