"""Multi-spectral channel attention (FcaNet, Qin et al., 2021). Formulas and sources: docs/modules.md."""

import math

import torch
from torch import nn
from torch.nn import functional as F

from .registry import register

# FcaNet's "top16" frequency pairs (u, v) on a 7x7 grid, in the paper's order.
TOP16 = (
    (0, 0),
    (0, 1),
    (6, 0),
    (0, 5),
    (0, 2),
    (1, 0),
    (1, 2),
    (4, 0),
    (5, 0),
    (1, 6),
    (3, 0),
    (0, 4),
    (0, 6),
    (0, 3),
    (3, 5),
    (2, 2),
)


def _dct_basis(freq: int, size: int) -> torch.Tensor:
    """Orthonormal 1-D DCT-II basis vector B(p, f, L) for p in [0, L)."""
    p = torch.arange(size, dtype=torch.float64)
    b = torch.cos(math.pi * freq * (p + 0.5) / size) / math.sqrt(size)
    return b * math.sqrt(2) if freq != 0 else b


def dct_filters(channels: int, h: int, w: int, freqs=TOP16) -> torch.Tensor:
    """[C, h, w] filter bank: contiguous channel groups, group k uses frequency pair k (scaled to h, w)."""
    groups = torch.tensor_split(torch.arange(channels), len(freqs))
    bank = torch.zeros(channels, h, w, dtype=torch.float64)
    for idx, (u, v) in zip(groups, freqs):
        bank[idx] = torch.outer(_dct_basis(u * (h // 7), h), _dct_basis(v * (w // 7), w))
    return bank.float()


class MultiSpectralAttention(nn.Module):
    """DCT-weighted squeeze -> Linear C->C/r -> ReLU -> Linear C/r->C (no biases) -> sigmoid gate.

    Params 2C^2/r; the DCT bank is a buffer. The squeeze is an elementwise product and a sum, which
    fvcore does not count: that is how FcaNet-50's 4,111,979,520 FLOPs come out.
    """

    def __init__(self, channels: int, r: int = 16, hw: int = 7):
        super().__init__()
        self.hw = hw
        self.register_buffer("dct", dct_filters(channels, hw, hw), persistent=False)
        self._pooled_dct: dict = {}  # input size -> filters that fold in the adaptive pooling
        hidden = max(channels // r, 1)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
        )

    def filters_for(self, h: int, w: int) -> torch.Tensor:
        """DCT filters for an [h, w] input: sum(pool(x) * f) == sum(x * pool^T(f)) since pooling is linear.

        FcaNet pools a map of another size to the filter size first; folding the pool's transpose into
        the filters once gives the same numbers without resampling every feature map (at a proxy
        resolution the pool would otherwise upsample, e.g. 16x16 -> 56x56, on every forward).
        """
        h, w = int(h), int(w)  # plain ints, also while a tracer (fvcore) records the forward
        if (h, w) == (self.hw, self.hw):
            return self.dct
        key = (h, w, self.dct.device, self.dct.dtype)
        if key not in self._pooled_dct:
            eye = dict(dtype=torch.float64, device=self.dct.device)  # on the filters' device (CUDA too)
            with torch.no_grad():
                ph = F.adaptive_avg_pool1d(torch.eye(h, **eye)[None], self.hw)[0]  # [h, hw]
                pw = F.adaptive_avg_pool1d(torch.eye(w, **eye)[None], self.hw)[0]  # [w, hw]
                f = torch.einsum("ia,cab,jb->cij", ph, self.dct.double(), pw)
            self._pooled_dct[key] = f.to(self.dct)
        return self._pooled_dct[key]

    def forward(self, x):
        y = (x * self.filters_for(*x.shape[-2:])).sum(dim=(2, 3))
        return x * self.fc(y).sigmoid()[:, :, None, None]


@register("msca", positions=("after_conv2", "after_conv3", "after_add"))
def msca(channels, r, site):
    """FcaNet multi-spectral channel attention (DCT filters sized to the target map)."""
    return MultiSpectralAttention(channels, r, hw=site.target_hw)
