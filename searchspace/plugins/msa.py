"""Multi-scale attention (takaniwa/DSNet) and attentional feature fusion (Dai et al.).

All four modules are sigmoid gates whose logits are a sum of "branches": a bottleneck
conv C->c -> BN -> ReLU -> conv c->C -> BN, run either at full resolution (local), on an
adaptive-average-pooled P x P map upsampled back (context), or on the global average (P = 1,
broadcast). Each branch has 2Cc + 3c + 3C params.

- MSA (block, after_add):  out = 2 * x * sigmoid(sum of branches on x)
- MSAF (fusion):           w from the branches on x + y; out = 2x*w + 2y*(1-w)
- AFF (fusion):            MSAF with local + global branches only
- iAFF (fusion):           two rounds of AFF-style fusion sharing one global branch
                           (option variant="mxnet": a second global branch, as the MXNet original)
Fusion modules return the fused map before the block's final ReLU. Formulas, sources and where we
differ from the authors' code: docs/modules.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .forms import counting, pointwise
from .registry import register

# Pool sizes per branch: None = local (no pooling), 1 = global.
_SCALES = {4: (None, 4, 8, 1), 5: (None, 4, 8, 16, 1)}


class Branch(nn.Sequential):
    """conv C->c (bias) -> BN -> ReLU -> conv c->C (bias) -> BN, optionally on a P x P pooled map."""

    def __init__(self, channels: int, r: int, pool: int | None = None):
        c = max(channels // r, 1)  # narrow proxy widths: keep at least one hidden channel
        layers = [nn.AdaptiveAvgPool2d(pool)] if pool is not None else []
        layers += [
            nn.Conv2d(channels, c, 1),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, channels, 1),
            nn.BatchNorm2d(channels),
        ]
        super().__init__(*layers)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _run(self, x)
        if self.pool is not None and self.pool > 1:  # the global branch broadcasts instead
            y = F.interpolate(y, size=x.shape[-2:], mode="nearest")
        return y

    def on_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """The branch's layers after its pool, on an already pooled map (no upsampling)."""
        return _run(list(self)[1:], pooled)


def _run(layers, y: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        y = pointwise(layer, y) if isinstance(layer, nn.Conv2d) else layer(y)
    return y


class MultiScaleLogits(nn.Module):
    """Sum of branch outputs at the given pool sizes: the gate's pre-sigmoid logits."""

    def __init__(self, channels: int, r: int, scales=_SCALES[4]):
        super().__init__()
        self.branches = nn.ModuleList(Branch(channels, r, p) for p in scales)
        pools = [b.pool for b in self.branches if b.pool is not None and b.pool > 1]
        self.finest = max(pools, default=None)
        # the fast form needs every context pool size to divide the finest one
        self.nested = all(self.finest % p == 0 for p in pools)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if counting():
            return self.forward_counted(x)
        if self.finest is None or not self.nested or h % self.finest or w % self.finest:
            return self.forward_per_branch(x)
        return self.forward_fast(x)

    def forward_counted(self, x: torch.Tensor) -> torch.Tensor:
        """Every branch pools x and is upsampled back on its own (what the published counts count)."""
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out

    def forward_per_branch(self, x: torch.Tensor) -> torch.Tensor:
        """The counted form with exact shortcuts for pooling and upsampling by whole factors.

        At proxy resolutions late-stage maps are smaller than the pool (a 4x4 map pooled to 8x8):
        adaptive pooling then repeats each pixel, and nearest upsampling back keeps every k-th one.
        Both are plain strided copies, where torch's adaptive pooling kernels take about 2 ms per call
        on CPU for such maps (an MSA ResNet-18's step at 64 px spent 40 % of its overhead there).
        """
        h, w = x.shape[-2:]
        out = None
        for branch in self.branches:
            if branch.pool is None:
                y = branch(x)
            elif branch.pool == 1:
                y = branch.on_pooled(x.mean((2, 3), keepdim=True))  # broadcasts in the sum
            else:
                y = _resize(branch.on_pooled(_resize(x, branch.pool, pool=True)), (h, w))
            out = y if out is None else out + y
        return out

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """Same logits with one pass over x for all pools and one full-size add for all context branches.

        When the map side is a multiple of the finest pool size P, averaging into P x P cells and then
        into coarser cells equals pooling x directly, and nearest upsampling is a block repeat, so the
        context logits can be summed at P x P and broadcast onto the local branch's map at once.
        """
        b, ch, h, w = x.shape
        P = self.finest
        fine = _resize(x, P, pool=True)
        local = ctx = None
        for branch in self.branches:
            if branch.pool is None:
                local = branch(x)
                continue
            if branch.pool == 1:
                y = branch.on_pooled(fine.mean((2, 3), keepdim=True))  # [B, C, 1, 1]: broadcasts below
            elif branch.pool == P:
                y = branch.on_pooled(fine)
            else:
                k = P // branch.pool
                y = branch.on_pooled(F.avg_pool2d(fine, k))
                y = (
                    y.view(b, ch, branch.pool, 1, branch.pool, 1)
                    .expand(-1, -1, -1, k, -1, k)
                    .reshape(b, ch, P, P)
                )
            ctx = y if ctx is None else ctx + y
        out = local.view(b, ch, P, h // P, P, w // P) + ctx.view(b, ch, P, 1, P, 1)
        return out.view(b, ch, h, w)


def _resize(x: torch.Tensor, size, pool: bool = False) -> torch.Tensor:
    """Adaptive average pooling (pool=True) or nearest upsampling to `size`, as views and copies
    where the sizes divide each other; torch's own kernels otherwise."""
    (h, w), (H, W) = x.shape[-2:], (size if isinstance(size, tuple) else (size, size))
    b, c = x.shape[:2]
    if (h, w) == (H, W):
        return x
    if H % h == 0 and W % w == 0:  # every output cell holds one input pixel: a block repeat
        kh, kw = H // h, W // w
        return x[:, :, :, None, :, None].expand(b, c, h, kh, w, kw).reshape(b, c, H, W)
    if h % H == 0 and w % W == 0:
        return F.avg_pool2d(x, (h // H, w // W)) if pool else x[:, :, :: h // H, :: w // W]
    return F.adaptive_avg_pool2d(x, (H, W)) if pool else F.interpolate(x, size=(H, W), mode="nearest")


class MSA(nn.Module):
    """Multi-scale attention on one map: 2 * x * sigmoid(logits(x))."""

    def __init__(self, channels: int, r: int = 16, branches: int = 4):
        super().__init__()
        self.logits = MultiScaleLogits(channels, r, _SCALES[branches])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x * self.logits(x).sigmoid()


class MSAF(nn.Module):
    """Multi-scale attentional fusion of the block branch x and the identity y; AFF is the (local, global) case."""

    def __init__(self, channels: int, r: int = 16, scales=_SCALES[4]):
        super().__init__()
        self.logits = MultiScaleLogits(channels, r, scales)

    def forward(self, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        w = self.logits(x + identity).sigmoid()
        if counting():
            return 2 * x * w + 2 * identity * (1 - w)
        return 2 * torch.lerp(identity, x, w)  # y + w (x - y): one pass instead of five


class IAFF(nn.Module):
    """Iterative AFF: a first fusion gives xi, which drives the second gate.

    variant "port" (default, the PyTorch port; its printed 12.8 M for ResNet-18): both rounds use
    one global branch (the port builds a second one it never calls; we do not build it).
    variant "mxnet" (the MXNet original behind the paper's results): round two has its own global
    branch, one more branch of parameters (2Cc + 3c + 3C).
    """

    def __init__(self, channels: int, r: int = 4, variant: str = "port"):
        super().__init__()
        if variant not in ("port", "mxnet"):
            raise ValueError(f"iAFF variant must be 'port' or 'mxnet', got {variant!r}")
        self.local1 = Branch(channels, r)
        self.local2 = Branch(channels, r)
        self.glob = Branch(channels, r, pool=1)
        self.glob2 = Branch(channels, r, pool=1) if variant == "mxnet" else None

    def forward(self, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        s = x + identity
        w = (self.local1(s) + self.glob(s)).sigmoid()
        mix = (lambda w: x * w + identity * (1 - w)) if counting() else (lambda w: torch.lerp(identity, x, w))
        xi = mix(w)
        glob2 = self.glob if self.glob2 is None else self.glob2
        w = (self.local2(xi) + glob2(xi)).sigmoid()
        return mix(w)


_BRANCHES = {"branches": (4, 5)}


@register("msa", kind="block", positions=("after_add",), default_r=16, options=_BRANCHES)
def msa(channels, r, site, branches=4):
    """MSA, multi-scale attention after the residual add (takaniwa/DSNet)."""
    return MSA(channels, r, branches)


@register("msaf", kind="fusion", default_r=16, options=_BRANCHES)
def msaf(channels, r, site, branches=4):
    """MSAF, multi-scale attentional fusion replacing the residual add (takaniwa/DSNet)."""
    return MSAF(channels, r, _SCALES[branches])


@register("aff", kind="fusion", default_r=4)
def aff(channels, r, site):
    """AFF, attentional feature fusion: local + global gate (Dai et al.)."""
    return MSAF(channels, r, (None, 1))


@register(
    "iaff", kind="fusion", default_r=4, options={"variant": ("port", "mxnet")}, implicit_defaults=("variant",)
)
def iaff(channels, r, site, variant="port"):
    """iAFF, iterative attentional feature fusion (Dai et al.); variant "mxnet" = the original's second global branch."""
    return IAFF(channels, r, variant)
