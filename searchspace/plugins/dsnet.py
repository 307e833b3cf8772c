"""DSM and DAM (DSNet-ImageNet-COCO): decoupled channel/spatial attention with a selective gate.

Both modules share one front end that builds a full [B, C, H, W] attention map A from a channel
branch and a spatial branch combined in series (outer product) and in parallel (sum), with a
selective-kernel gate choosing between the two. DSM turns A into a softmax pooling of a value map
and adds the pooled vector to x; DAM projects A and gates x with it.

FLOP convention: the ops are written so fvcore counts what the authors' code counts (the three
context products and the series outer product are matmuls; means, max pools, softmaxes and the
DSM pooling are elementwise and uncounted). This reproduces the published DSNet50 totals exactly.
Formulas, sources and initialisation: docs/modules.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .forms import counting, pointwise
from .registry import BLOCK_POSITIONS, register


class DecoupledAttention(nn.Module):
    """The shared front end: x [B, C, H, W] -> attention A [B, C, H, W].

    Params 7Cc + C + 4c + bias * (1 + 3c + C), c = C // r.
    """

    def __init__(self, channels: int, r: int, bias: bool = False):
        super().__init__()
        c = max(channels // r, 1)  # narrow proxy widths: keep at least one hidden channel
        # channel branch: softmax-weighted spatial pooling of a reduced value map
        self.ch_value = nn.Conv2d(channels, c, 1, bias=bias)
        self.ch_query = nn.Conv2d(channels, 1, 1, bias=bias)
        self.ch_norm = nn.LayerNorm([c, 1, 1])
        self.ch_expand = nn.Conv2d(c, channels, 1, bias=bias)
        # spatial branch: a channel-softmax descriptor projected onto every position
        self.sp_query = nn.Conv2d(channels, c, 1, bias=bias)
        self.sp_value = nn.Conv2d(channels, c, 1, bias=bias)
        # selective gate between the series and the parallel combination
        self.sel_reduce = nn.Conv2d(channels, c, 1, bias=False)
        self.sel_norm = nn.BatchNorm2d(c)
        self.sel_expand = nn.Conv2d(c, 2 * channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_counted(x) if counting() else self.forward_fast(x)

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """The counted form rearranged: one conv for the four 1x1 convs that read x, no full map but A,
        and the convs on pooled vectors as matrix products (`pointwise`).

        With ch [C, 1] and sp [1, N] the series map is ch sp and the parallel one ch + sp, so the gate's
        input mean(series + parallel) = ch mean(sp) + ch + mean(sp) needs no map, and
        A = a0 ch sp + a1 (ch + sp) = a1 ch + (a0 ch + a1) sp is one fused multiply-add.
        """
        b, ch, h, w = x.shape
        c = self.ch_value.out_channels
        convs = (self.ch_value, self.ch_query, self.sp_query, self.sp_value)
        weight = torch.cat([m.weight for m in convs])
        bias = torch.cat([m.bias for m in convs]) if self.ch_value.bias is not None else None
        value, query, sp_query, sp_value = F.conv2d(x, weight, bias).flatten(2).split((c, 1, c, c), 1)
        context = torch.matmul(value, query.softmax(-1).transpose(1, 2)).unsqueeze(-1)  # [B, c, 1, 1]
        ch_att = pointwise(self.ch_expand, F.relu(self.ch_norm(context))).sigmoid().flatten(2)  # [B, C, 1]
        sp_weights = sp_query.amax(-1).softmax(-1).unsqueeze(1)  # [B, 1, c]
        sp_att = torch.matmul(sp_weights, sp_value).sigmoid()  # [B, 1, N]
        sp_mean = sp_att.mean(-1, keepdim=True)  # [B, 1, 1]
        s = (ch_att * sp_mean + ch_att + sp_mean).unsqueeze(-1)  # mean of series + parallel, [B, C, 1, 1]
        a = (
            pointwise(self.sel_expand, F.relu(self.sel_norm(pointwise(self.sel_reduce, s))))
            .view(b, 2, ch, 1)
            .softmax(1)
        )
        a0, a1 = a[:, 0], a[:, 1]
        return torch.addcmul(a1 * ch_att, a0 * ch_att + a1, sp_att).view(b, ch, h, w)

    def forward_counted(self, x: torch.Tensor) -> torch.Tensor:
        """The authors' arrangement, which the published FLOPs count."""
        b, ch, h, w = x.shape
        # channel attention [B, C, 1]
        value = self.ch_value(x).flatten(2)  # [B, c, N]
        mask = self.ch_query(x).flatten(2).softmax(-1)  # [B, 1, N]
        context = torch.matmul(value, mask.transpose(1, 2)).unsqueeze(-1)  # [B, c, 1, 1]
        ch_att = self.ch_expand(F.relu(self.ch_norm(context))).sigmoid().flatten(2)
        # spatial attention [B, 1, N]
        query = F.adaptive_max_pool2d(self.sp_query(x), 1).flatten(1).softmax(-1).unsqueeze(1)  # [B, 1, c]
        sp_att = torch.matmul(query, self.sp_value(x).flatten(2)).sigmoid()
        # series as a matmul (outer product), parallel as a broadcast sum
        series = torch.matmul(ch_att, sp_att).view(b, ch, h, w)
        parallel = (ch_att + sp_att).view(b, ch, h, w)
        s = (series + parallel).mean((2, 3), keepdim=True)
        a = self.sel_expand(F.relu(self.sel_norm(self.sel_reduce(s)))).view(b, 2, ch, 1, 1).softmax(1)
        return a[:, 0] * series + a[:, 1] * parallel


class DSM(nn.Module):
    """Decoupled self-attention: x + sum_N(ReLU(conv(x)) * softmax_N(A)).

    Params C^2 + 7Cc + C + 4c + bias * (1 + 3c + 2C).
    """

    def __init__(self, channels: int, r: int = 16, bias: bool = False):
        super().__init__()
        self.attention = DecoupledAttention(channels, r, bias)
        self.value = nn.Conv2d(channels, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.attention(x).flatten(2).softmax(-1)
        value = F.relu(self.value(x)).flatten(2)
        return x + (value * weights).sum(-1)[..., None, None]


class DAM(nn.Module):
    """Decoupled attention: x * sigmoid(conv(A)). The projection always has a bias.

    Params C^2 + 7Cc + 2C + 4c + bias * (1 + 3c + C).
    """

    def __init__(self, channels: int, r: int = 16, bias: bool = False):
        super().__init__()
        self.attention = DecoupledAttention(channels, r, bias)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.proj(self.attention(x)).sigmoid()


_OPTIONS = {"bias": (False, True)}


@register("dsm", kind="block", positions=BLOCK_POSITIONS, default_r=16, options=_OPTIONS)
def dsm(channels, r, site, bias=False):
    """DSM, decoupled self-attention (DSNet)."""
    return DSM(channels, r, bias)


@register("dam", kind="block", positions=BLOCK_POSITIONS, default_r=16, options=_OPTIONS)
def dam(channels, r, site, bias=False):
    """DAM, decoupled attention (DSNet)."""
    return DAM(channels, r, bias)
