"""Squeeze-and-Excitation (Hu et al., 2018). Formulas and sources: docs/modules.md."""

from torch import nn

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
        return x * self.fc2(self.act(self.fc1(self.pool(x)))).sigmoid()


@register("se", positions=BLOCK_POSITIONS)
def se(channels, r, site):
    """Squeeze-and-Excitation channel gate."""
    return SqueezeExcite(channels, r)
