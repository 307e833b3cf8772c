"""SDA, selective depth attention (SDA-xNet): a stage-level module.

It sees the pre-ReLU outputs Z_1..Z_n of all n blocks of a stage and returns
ReLU(sum_i a_i * Z_i), where a is a softmax over the depth axis, per channel, of n logit vectors
computed from the pooled sum of the Z_i. Params per stage C*d + 2d + n*(d*C + C), d = max(C // r, L).
The backbone hands it each block's own pre-ReLU map, which no later in-place op changes
(docs/modules.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .forms import counting, pointwise
from .registry import register


class SDA(nn.Module):
    def __init__(self, channels: int, num_blocks: int, r: int = 16, min_dim: int = 64):
        super().__init__()
        d = max(channels // r, min_dim)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Sequential(
            nn.Conv2d(channels, d, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True)
        )
        self.heads = nn.ModuleList(nn.Conv2d(d, channels, 1) for _ in range(num_blocks))

    def forward(self, zs: list[torch.Tensor]) -> torch.Tensor:
        if len(zs) != len(self.heads):
            raise ValueError(f"SDA was built for {len(self.heads)} blocks, got {len(zs)} outputs")
        if counting():
            return self.forward_counted(zs)
        conv, bn, act = self.reduce
        v = act(bn(pointwise(conv, self.pool(sum(zs[1:], zs[0])))))
        # the n heads as one matrix product; softmax over the depth axis
        weight = torch.cat([head.weight for head in self.heads]).flatten(1)
        bias = torch.cat([head.bias for head in self.heads])
        a = F.linear(v.flatten(1), weight, bias).view(v.shape[0], len(zs), -1, 1, 1).softmax(1)
        out = a[:, 0] * zs[0]  # weighted sum, one fused pass per map, without stacking the n maps
        for i in range(1, len(zs)):
            out = torch.addcmul(out, a[:, i], zs[i])
        return F.relu(out)

    def forward_counted(self, zs: list[torch.Tensor]) -> torch.Tensor:
        """The authors' arrangement: a conv per head and a product and a sum per map."""
        v = self.reduce(self.pool(sum(zs[1:], zs[0])))
        a = torch.stack([head(v) for head in self.heads]).softmax(0)  # [n, B, C, 1, 1], softmax over depth
        out = a[0] * zs[0]
        for a_i, z in zip(a[1:], zs[1:]):
            out = out + a_i * z
        return F.relu(out)


@register("sda", kind="stage", default_r=16, options={"min_dim": (64,)})
def sda(channels, r, site, min_dim=64):
    """SDA, selective depth attention over the block outputs of a stage (SDA-xNet)."""
    return SDA(channels, site.num_blocks, r, min_dim)
