"""How a backbone makes its convolutions, so KernelWarehouse can replace them.

A backbone asks its conv maker for every convolution and names the warehouse (stage) the conv
belongs to, or None for a conv that must stay static (stem, the few excluded layers). After the
whole network is built it calls `finalize(model)` once: a KernelWarehouse maker needs every member
of a warehouse before it can size the cells.
"""

from __future__ import annotations

from torch import nn


class StaticConvs:
    """Plain nn.Conv2d everywhere."""

    def conv(
        self,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = False,
        warehouse: int | None = None,
    ) -> nn.Module:
        return nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias)

    def finalize(self, model: nn.Module) -> None:
        pass
