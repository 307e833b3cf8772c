"""KernelWarehouse (Li & Yao, ICML 2024): convolutions assembled from a shared warehouse of cells.

Every KW conv of a warehouse (one per stage in a ResNet) is cut into m cells of shape
[c_out, c_in] (1x1: spatial positions are cells too). Its kernel is rebuilt for every sample as
a mixture of the warehouse's n cells, weighted by an input-dependent attention:

    W_i(x) = sum_j a_ij(x) e_j,    a = (1 - tau) z / (sum |z| + 1e-3) + tau beta   (no softmax)

z comes from a small per-conv head (GAP -> Linear -> BN1d -> ReLU -> Linear, n+1 logits per
cell; the last is a zero cell that is never stored), beta is a fixed one-hot start and tau falls
1 -> 0 over the first epochs (`searchspace.set_kw_epoch`; the authors anneal over 20 epochs, 15 for
MobileNetV2). The per-sample kernels run as one grouped conv.

`KernelWarehouseConvs` is the conv maker of `backbones/convs.py`: a backbone asks it for every
conv, naming the warehouse; `finalize(model)` then sizes the cells and warehouses (it needs all
members first), attaches the warehouse parameters to the model once, as `model.kw_warehouses`,
and builds each conv's attention. Sizes follow the authors' Warehouse_Manager, so parameter counts
match their released models to the unit; each layer's slice of cells is initialised as theirs is
(Kaiming normal, fan_out over the slice). More, and the recipe (drop-path, start temperature):
docs/modules.md.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn
from torch.nn import functional as F

from ..plugins.forms import counting

REDUCTION = 1 / 16  # attention hidden width = max(C_in * REDUCTION, 16)
NONLOCAL_BASIS_RATIO = 1 / 16  # other layers' cells are seen through this many basis logits
EPS = 1e-3


def _budget_stage(key) -> int:
    """Warehouse keys are a stage index or a tuple starting with one (e.g. (3, "dw"))."""
    return key if isinstance(key, int) else key[0]


def _cell_side(g: int, rho: float) -> int:
    """Cell side: gcd times the cell ratio, kept a divisor of the gcd so cells tile every member."""
    target = max(int(g * rho), 1)
    return max(d for d in range(1, target + 1) if g % d == 0)


class KWAttention(nn.Module):
    """Contrasting-driven attention of one KW conv: [B, C, H, W] -> [B*m, n] mixing weights.

    With `local` = (start, count) the nonlocal-basis variant is used (ResNet-50 1/2x): the conv
    keeps one logit per own warehouse cell, but sees the other n - count cells through a learned
    map from few basis logits, which shrinks the head when n is large.
    """

    def __init__(
        self,
        cin: int,
        n: int,
        m: int,
        beta: torch.Tensor,
        local: tuple[int, int] | None = None,
        reduction: float = REDUCTION,
        basis_ratio: float = NONLOCAL_BASIS_RATIO,
    ):
        super().__init__()
        hidden = max(int(cin * reduction), 16)
        self.n, self.m = n, m
        self.fc1 = nn.Linear(cin, hidden, bias=False)  # BN follows, so no bias
        self.norm = nn.BatchNorm1d(hidden)
        self.act = nn.ReLU(inplace=True)
        self.local = local
        if local is None:
            self.fc2 = nn.Linear(hidden, (n + 1) * m)
        else:
            start, count = local
            num_basis = max(int((n - count) * basis_ratio), 16)
            self.fc2 = nn.Linear(hidden, (count + num_basis + 1) * m, bias=False)
            # a warehouse with no other layers' cells has nothing to map to
            self.basis = nn.Linear(num_basis, n - count, bias=False) if n > count else None
            self.basis_bias = nn.Parameter(torch.zeros((n + 1) * m))
        self.register_buffer("beta", beta, persistent=False)  # [m, n+1] one-hot start
        self.register_buffer("tau", torch.ones(()))  # saved, so a trained checkpoint evaluates at its tau
        for mod in self.modules():
            if isinstance(mod, nn.Linear) and mod.weight.numel():
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    def set_temperature(self, tau: float) -> None:
        self.tau.fill_(float(tau))

    def _expand_basis(self, z: torch.Tensor) -> torch.Tensor:
        start, count = self.local
        z = z.reshape(-1, z.shape[-1] // self.m)  # [B*m, count + basis + 1]
        own, basis, zero = z[:, :count], z[:, count:-1], z[:, -1:]
        other = self.basis(basis) if self.basis is not None else basis[:, :0]  # [B*m, n - count]
        z = torch.cat([other[:, :start], own, other[:, start:], zero], 1)
        return z.reshape(-1, (self.n + 1) * self.m) + self.basis_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc2(self.act(self.norm(self.fc1(x.mean((2, 3))))))
        if self.local is not None:
            z = self._expand_basis(z)
        z = z.reshape(-1, self.m, self.n + 1)
        z = z / (z.abs().sum(-1, keepdim=True) + EPS)
        a = (1.0 - self.tau) * z + self.tau * self.beta
        return a[..., :-1].reshape(-1, self.n)  # the zero cell contributes nothing


FORMS = ("auto", "grouped", "matmul")


class KWConv2d(nn.Module):
    """A convolution whose kernel is assembled per sample from a warehouse (see module docstring).

    Cells are ordered (spatial position, out-channel block, in-channel block), spatial outermost.
    The per-sample conv runs in one of two equal forms (`form`, one of FORMS):
    - "grouped": one grouped conv over the batch folded into channels (the authors' form, which the
      counters count);
    - "matmul": one batched matmul of the per-sample kernels with the input (1x1 convs: the map
      itself; k x k: its unfolded patches); ungrouped convs only.
    "auto" takes "matmul" for ungrouped 1x1 convs on CPU, where the grouped conv over the batch
    runs far below matmul speed, and "grouped" elsewhere: for k x k convs unfolding the input
    costs more than it saves from 128 px on (bench/kw_conv.py, docs/modules.md), and cuDNN's
    grouped conv is fast.
    """

    form = "auto"

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = False,
        warehouse=0,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = cin, cout, groups
        self.kernel_size, self.stride, self.padding = (k, k), (stride, stride), (padding, padding)
        self.warehouse = warehouse
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.attention: KWAttention | None = None
        self._bank: tuple = ()  # the model's KWWarehouses, held without registering it twice

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def num_cells(self, cell: tuple[int, int]) -> int:
        co, ci, kh, kw = self.weight_shape
        return (co // cell[0]) * (ci // cell[1]) * kh * kw

    def bind(self, bank: KWWarehouses, index: int, attention: KWAttention) -> None:
        self._bank, self.index, self.attention = (bank,), index, attention

    @property
    def warehouse_weight(self) -> torch.Tensor:
        return self._bank[0].weights[self.index]

    def assemble(self, attn: torch.Tensor) -> torch.Tensor:
        """[B*m, n] mixing weights -> [B*C_out, C_in/groups, k, k] per-sample kernels."""
        e = self.warehouse_weight  # [n, c_out, c_in]
        n, co, ci = e.shape
        cout, cin_g, kh, kw = self.weight_shape
        w = attn @ e.reshape(n, co * ci)  # the kernel assembly: |W| * n MACs per sample
        w = w.reshape(-1, kh * kw, cout // co, cin_g // ci, co, ci)
        return w.permute(0, 2, 4, 3, 5, 1).reshape(-1, cin_g, kh, kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attention is None:
            raise RuntimeError("KWConv2d used before KernelWarehouseConvs.finalize(model)")
        b = x.shape[0]
        w = self.assemble(self.attention(x))
        if self._form(x) == "matmul":
            return self._conv_matmul(x, w, b)
        # One grouped conv for the whole batch: sample i only sees its own kernel. It needs the batch
        # and channels adjacent (NCHW); a channels_last input is converted once here, explicitly, and
        # the output given back in channels_last so that the layers after it keep their layout.
        channels_last = (
            x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        )
        y = F.conv2d(
            x.contiguous().view(1, -1, *x.shape[2:]), w, None, self.stride, self.padding, 1, self.groups * b
        )
        y = y.reshape(b, self.out_channels, *y.shape[2:])
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y

    def _form(self, x: torch.Tensor) -> str:
        if counting() or self.groups != 1:
            return "grouped"
        if self.form == "auto":
            return "matmul" if x.device.type == "cpu" and self.kernel_size == (1, 1) else "grouped"
        return self.form

    def _conv_matmul(self, x: torch.Tensor, w: torch.Tensor, b: int) -> torch.Tensor:
        """y_b = W_b @ patches(x_b) for every sample b at once; W_b is [C_out, C_in * k * k]."""
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if self.kernel_size == (1, 1) and self.padding == (0, 0):
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
            h, wd = x.shape[2:]
            cols = x.reshape(b, self.in_channels, h * wd)
        else:  # unfold orders a patch (channel, row, column), as a kernel's [C_in, k, k] flattens
            h, wd = (
                (s + 2 * p - k) // st + 1
                for s, p, k, st in zip(x.shape[2:], self.padding, self.kernel_size, self.stride)
            )
            cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        y = torch.bmm(w.reshape(b, self.out_channels, -1), cols).view(b, self.out_channels, h, wd)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, warehouse={self.warehouse!r}"
        )


class KWWarehouses(nn.Module):
    """The warehouses of a network: parameter i has shape [n_i, c_out_i, c_in_i]."""

    def __init__(self):
        super().__init__()
        self.weights = nn.ParameterList()
        self.keys: list = []
        self.budgets: list[float] = []

    def forward(self, *args):
        raise RuntimeError("kw_warehouses holds parameters only; it is not a layer")

    def extra_repr(self) -> str:
        return ", ".join(
            f"{k!r}: b={b:g} {tuple(w.shape)}" for k, b, w in zip(self.keys, self.budgets, self.weights)
        )


class KernelWarehouseConvs:
    """Conv maker: static convs where the warehouse (or its budget) is None, KW convs elsewhere.

    budgets: stage index -> b (None = static). A warehouse key is a stage index, or a tuple whose
    first element is the stage index (several warehouses per stage, e.g. MobileNetV2's pointwise
    and depthwise ones); the stage's b applies to all of them.
    nonlocal_basis: the nonlocal-basis attention for every KW conv (used by ResNet-50 1/2x).
    """

    def __init__(
        self,
        budgets: dict[int, float | None],
        nonlocal_basis: bool = False,
        reduction: float = REDUCTION,
        basis_ratio: float = NONLOCAL_BASIS_RATIO,
    ):
        self.budgets = dict(budgets)
        self.nonlocal_basis = nonlocal_basis
        self.reduction, self.basis_ratio = reduction, basis_ratio

    def budget(self, warehouse) -> float | None:
        return None if warehouse is None else self.budgets.get(_budget_stage(warehouse))

    def conv(
        self,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = False,
        warehouse=None,
    ) -> nn.Module:
        if self.budget(warehouse) is None:
            return nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias)
        return KWConv2d(cin, cout, k, stride, padding, groups, bias, warehouse)

    def finalize(self, model: nn.Module) -> None:
        if isinstance(model, nn.Sequential):
            raise TypeError(
                "KernelWarehouseConvs.finalize needs a model class; an nn.Sequential would run "
                "the attached warehouses as a layer"
            )
        members: dict = defaultdict(list)
        for mod in model.modules():  # module order decides which warehouse slice a conv starts on
            if isinstance(mod, KWConv2d) and mod.attention is None:
                members[mod.warehouse].append(mod)
        bank = KWWarehouses()
        for index, (key, convs) in enumerate(members.items()):
            b = self.budget(key)
            rho = 0.5 if b < 1 else 1.0
            shapes = [c.weight_shape for c in convs]
            cell = tuple(_cell_side(math.gcd(*(s[d] for s in shapes)), rho) for d in (0, 1))
            ms = [c.num_cells(cell) for c in convs]
            n = max(int(b * sum(ms)), 1)
            weight = torch.empty(n, *cell)
            start = 0
            for conv, m in zip(convs, ms):
                beta, fresh = _one_hot_start(m, n, b, start)
                s0 = min(start, n)  # the conv's own cells (authors: int(b * m) of them from its start)
                local = (s0, max(0, min(int(b * m), n - s0))) if self.nonlocal_basis else None
                attention = KWAttention(conv.in_channels, n, m, beta, local, self.reduction, self.basis_ratio)
                conv.bind(bank, index, attention)
                with torch.no_grad():
                    weight[[i % n for i in range(start, start + fresh)]] = _slice_init(fresh, cell)
                start += fresh
            if start < n:  # rounding left cells no layer starts on: initialised as one more slice
                with torch.no_grad():
                    weight[start:] = _slice_init(n - start, cell)
            bank.weights.append(nn.Parameter(weight))
            bank.keys.append(key)
            bank.budgets.append(b)
        if bank.keys:
            model.add_module("kw_warehouses", bank)


def slice_std(cells: int, cell: tuple[int, int]) -> float:
    """Kaiming normal (fan_out, ReLU gain) std of a layer's slice of `cells` warehouse cells.

    The authors initialise each layer's slice viewed as a [cells * c_out, c_in, 1, 1] kernel, so
    fan_out = cells * c_out: the std depends on how many cells the layer takes (b times its cell
    count for b >= 1), not on the layer's static kernel.
    """
    return math.sqrt(2.0 / (cells * cell[0]))


def _slice_init(cells: int, cell: tuple[int, int]) -> torch.Tensor:
    return torch.randn(cells, *cell) * slice_std(cells, cell)


def _one_hot_start(m: int, n: int, b: float, start: int) -> tuple[torch.Tensor, int]:
    """beta [m, n+1] and how many fresh warehouse cells the layer consumes.

    b >= 1: cell i starts on fresh cell start + i*b (its own slice of b cells).
    b < 1: one cell in every 1/b gets a fresh cell, the others the zero cell (column n); the chosen
    position rotates from one run of 1/b cells to the next (the authors' diagonal pattern).
    """
    beta = torch.zeros(m, n + 1)
    if b >= 1:
        step = int(b)
        for i in range(m):
            beta[i, (start + i * step) % n] = 1.0
        return beta, m * step
    k = round(1 / b)
    fresh = 0
    for i in range(m):
        if i % k == (i // k) % k:
            beta[i, (start + fresh) % n] = 1.0
            fresh += 1
        else:
            beta[i, n] = 1.0
    return beta, fresh


def kw_convs(model: nn.Module) -> list[KWConv2d]:
    return [m for m in model.modules() if isinstance(m, KWConv2d)]


def kw_assembly_macs(model: nn.Module) -> int:
    """MACs per image of building the kernels (attention @ warehouse): sum over KW convs of |W| * n."""
    return sum(math.prod(c.weight_shape) * c.warehouse_weight.shape[0] for c in kw_convs(model) if c._bank)


__all__ = [
    "FORMS",
    "KernelWarehouseConvs",
    "KWConv2d",
    "KWAttention",
    "KWWarehouses",
    "kw_assembly_macs",
    "kw_convs",
]
