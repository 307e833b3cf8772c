"""ResNet family with every plugin position (docs/modules.md), the stems and the downsampling styles.

The network follows torchvision's layout (v1.5: stride on the 3x3), so its parameter and fvcore
FLOP counts equal torchvision's for the plain genome. Plugins sit at named positions in each
block; a fusion module replaces the residual add; a stage module (SDA) sees every block's
pre-ReLU output. All convolutions come from a conv maker so KernelWarehouse can replace them.

No in-place op acts on a map that a plugin, fusion or stage module has been handed: the in-place
ReLUs here only act on a BatchNorm's fresh output, before any plugin sees it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..genome import Genome, Plugin
from ..plugins import registry
from ..plugins.registry import Site
from ..recipe import Recipe
from .specs import BackboneSpec, stride2_size


class BlurPool(nn.Module):
    """Fixed binomial [1,3,3,1] low-pass filter, stride 2, reflect padding (anti-aliased CNNs)."""

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([1.0, 3.0, 3.0, 1.0])
        k = torch.outer(a, a)
        self.register_buffer("kernel", (k / k.sum()).expand(channels, 1, 4, 4).contiguous(), persistent=False)
        self.channels = channels

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 2, 1, 2), mode="reflect"), self.kernel, stride=2, groups=self.channels)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random p of the samples, rescale the rest."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = 1.0 - self.p
        return x * x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class PaddingFreeConv(nn.Module):
    """Stride-2 3x3 conv with padding 0 plus a MaxPool2d(3, 2, 0) branch of its input.

    The max-pool branch keeps the information the unpadded conv loses at the border; a 1x1 conv
    matches channels where they change. Maps shrink to floor((H - 3) / 2) + 1.
    """

    def __init__(self, convs, cin: int, cout: int, groups: int, warehouse):
        super().__init__()
        self.conv = convs.conv(cin, cout, 3, 2, 0, groups=groups, warehouse=warehouse)
        self.pool = nn.MaxPool2d(3, 2, 0)
        self.proj = convs.conv(cin, cout, 1, warehouse=warehouse) if cin != cout else nn.Identity()

    def forward(self, x):
        return self.conv(x) + self.proj(self.pool(x))


@dataclass(frozen=True)
class BlockPlan:
    """Everything a block needs to know about its place in the network."""

    stage: int
    index: int
    stride: int
    hw_in: int  # map size at the target resolution entering the block
    hw_out: int
    style: str
    groups: int
    warehouse_first: int | None  # warehouse of the first conv and shortcut (hand-over rule)
    warehouse: int | None  # warehouse of the other convs


class Block(nn.Module):
    """BasicBlock or Bottleneck with plugin positions, an optional fusion, strided per `style`."""

    def __init__(
        self,
        kind: str,
        cin: int,
        planes: int,
        plan: BlockPlan,
        plugins: tuple[Plugin, ...],
        fusion: Plugin | None,
        convs,
        num_blocks: int,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.kind = kind
        exp = 4 if kind == "bottleneck" else 1
        cout = planes * exp
        s, style, wf, wo = plan.stride, plan.style, plan.warehouse_first, plan.warehouse
        # Which conv carries the stride: the 3x3 (v1.5 and its variants) or the first 1x1 (v1).
        strided_first = kind == "basic" or style == "v1"
        hw_c1 = plan.hw_out if strided_first else plan.hw_in

        def strided(cin_, cout_, k, groups, warehouse):
            if s == 1:
                return convs.conv(cin_, cout_, k, 1, k // 2, groups=groups, warehouse=warehouse)
            if style == "padding_free" and k == 3:
                return PaddingFreeConv(convs, cin_, cout_, groups, warehouse)
            if style == "blur":  # stride-1 conv; the BlurPool follows its BN-ReLU (see self.down)
                return convs.conv(cin_, cout_, k, 1, k // 2, groups=groups, warehouse=warehouse)
            return convs.conv(cin_, cout_, k, s, k // 2, groups=groups, warehouse=warehouse)

        if kind == "bottleneck":
            width = planes
            self.conv1 = (
                strided(cin, width, 1, 1, wf) if strided_first else convs.conv(cin, width, 1, warehouse=wf)
            )
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = (
                convs.conv(width, width, 3, 1, 1, groups=plan.groups, warehouse=wo)
                if strided_first
                else strided(width, width, 3, plan.groups, wo)
            )
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = convs.conv(width, cout, 1, warehouse=wo)
            self.bn3 = nn.BatchNorm2d(cout)
        else:
            width = planes
            self.conv1 = strided(cin, width, 3, 1, wf)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = convs.conv(width, width, 3, 1, 1, warehouse=wo)
            self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)  # only on a BN's fresh output, before any plugin sees it
        # Not in place: the pre-ReLU sum may be held by a stage module (SDA keeps every block's) or
        # be a map a fusion module returned and still holds. A module, so hook counters see it.
        self.out_relu = nn.ReLU()
        self.shortcut = self._shortcut(cin, cout, s, style, convs, wf)
        # Anti-aliased downsampling: conv(stride 1) -> BN -> ReLU -> BlurPool(stride 2) on the strided conv.
        blur = style == "blur" and s == 2
        self.down1 = BlurPool(width) if blur and strided_first else nn.Identity()
        self.down2 = BlurPool(width) if blur and not strided_first else nn.Identity()

        hw = {
            "after_conv1": hw_c1,
            "after_conv2": plan.hw_out,
            "after_conv3": plan.hw_out,
            "after_add": plan.hw_out,
            "fusion": plan.hw_out,
        }
        ch = {
            "after_conv1": width,
            "after_conv2": width,
            "after_conv3": cout,
            "after_add": cout,
            "fusion": cout,
        }

        def make(p: Plugin):
            site = Site(plan.stage, plan.index, p.position, hw[p.position], num_blocks)
            return registry.get(p.type).factory(ch[p.position], p.r, site, **p.opts)

        self.plugins = nn.ModuleDict()
        for pos in registry.BLOCK_POSITIONS:
            chain = [make(p) for p in plugins if p.position == pos]
            if chain:
                self.plugins[pos] = chain[0] if len(chain) == 1 else nn.Sequential(*chain)
        self.fusion = make(fusion) if fusion is not None else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None  # recipe, not architecture

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The residual branch's last BatchNorm (what zero_init_residual zeroes)."""
        return self.bn3 if self.kind == "bottleneck" else self.bn2

    @staticmethod
    def _shortcut(cin, cout, s, style, convs, warehouse):
        if s == 1 and cin == cout:
            return nn.Identity()
        if s == 1:
            return nn.Sequential(convs.conv(cin, cout, 1, warehouse=warehouse), nn.BatchNorm2d(cout))
        if style == "avgdown":
            return nn.Sequential(
                nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
                convs.conv(cin, cout, 1, warehouse=warehouse),
                nn.BatchNorm2d(cout),
            )
        if style == "blur":
            return nn.Sequential(
                BlurPool(cin), convs.conv(cin, cout, 1, warehouse=warehouse), nn.BatchNorm2d(cout)
            )
        if style == "padding_free":
            return nn.Sequential(
                nn.Conv2d(cin, cin, 3, 2, 0, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                convs.conv(cin, cout, 1, warehouse=warehouse),
                nn.BatchNorm2d(cout),
            )
        return nn.Sequential(convs.conv(cin, cout, 1, s, 0, warehouse=warehouse), nn.BatchNorm2d(cout))

    def _plug(self, pos, x):
        return self.plugins[pos](x) if pos in self.plugins else x

    def forward_preact(self, x):
        """The block's output before its final ReLU (what SDA aggregates)."""
        out = self._plug("after_conv1", self.down1(self.relu(self.bn1(self.conv1(x)))))
        if self.kind == "bottleneck":
            out = self._plug("after_conv2", self.down2(self.relu(self.bn2(self.conv2(out)))))
            out = self._plug("after_conv3", self.bn3(self.conv3(out)))
        else:
            out = self._plug("after_conv2", self.bn2(self.conv2(out)))
        if self.drop_path is not None:
            out = self.drop_path(out)
        identity = self.shortcut(x)
        return self.fusion(out, identity) if self.fusion is not None else out + identity

    def finish(self, z):
        return self._plug("after_add", self.out_relu(z))

    def forward(self, x):
        return self.finish(self.forward_preact(x))


class ResNetStage(nn.Module):
    """A stage's blocks as modules, and its stage module (SDA) when the genome's stage has one."""

    def __init__(self, blocks: list[Block], stage_module: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.stage_module = stage_module

    def forward(self, x):
        if self.stage_module is None:
            for b in self.blocks:
                x = b(x)
            return x
        zs = []
        for i, b in enumerate(self.blocks):
            zs.append(b.forward_preact(x))
            if i + 1 < len(self.blocks):
                x = b.finish(zs[-1])
        # The stage module's output replaces the last block's post-ReLU output, so that block's
        # after_add plugins (if any) apply to it.
        return self.blocks[-1]._plug("after_add", self.stage_module(zs))


def _stem(kind: str, cout: int, convs, cifar: bool) -> tuple[nn.Module, int]:
    """Returns the stem and its total stride (CIFAR stems keep the full 32x32 map)."""

    def cbr(cin, c, k, s, groups=1):
        return [convs.conv(cin, c, k, s, k // 2, groups=groups), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]

    if cifar:
        return nn.Sequential(*cbr(3, cout, 3, 1), *([HybridStemMix(cout)] if kind == "hybrid" else [])), 1
    if kind == "deep":  # ResNet-C / V1C: three 3x3 convs, widths C/2, C/2, C
        layers = cbr(3, cout // 2, 3, 2) + cbr(cout // 2, cout // 2, 3, 1) + cbr(cout // 2, cout, 3, 1)
        return nn.Sequential(*layers, nn.MaxPool2d(3, 2, 1)), 4
    if kind == "hybrid":
        return nn.Sequential(*cbr(3, cout, 3, 2), HybridStemMix(cout), nn.MaxPool2d(3, 2, 1)), 4
    return nn.Sequential(
        convs.conv(3, cout, 7, 2, 3), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
    ), 4


class HybridStemMix(nn.Module):
    """Padding-free paper's stem mixer: [depthwise 3x3 + BN + ReLU] || [MaxPool 3/1/1] -> concat -> 1x1."""

    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        )
        self.pool = nn.MaxPool2d(3, 1, 1)
        self.mix = nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.mix(torch.cat([self.dw(x), self.pool(x)], 1))


def scaled(c: int, width_mult: float, multiple: int = 4) -> int:
    """Proxy width: channels scaled and rounded to a multiple of `multiple` (never below 8)."""
    return c if width_mult == 1.0 else max(8, multiple, int(round(c * width_mult / multiple)) * multiple)


class ResNet(nn.Module):
    def __init__(
        self,
        genome: Genome,
        spec: BackboneSpec,
        num_classes: int,
        width_mult: float,
        convs,
        recipe: Recipe | None = None,
    ):
        super().__init__()
        recipe = recipe or Recipe()
        self.genome = genome
        kind = spec.block
        exp = spec.expansion
        cifar = "cifar" in spec.stems
        stem_c = scaled(16 if cifar else 64, width_mult)
        self.stem, stem_stride = _stem(genome.stem, stem_c, convs, cifar)
        if genome.downsampling == "blur" and not cifar:  # blur the stem's max-pool too
            self.stem[-1] = nn.Sequential(nn.MaxPool2d(2, 1), BlurPool(stem_c))
        hw = spec.target_resolution // stem_stride
        cin = stem_c
        stages = []
        for si, (depth, planes, st) in enumerate(zip(spec.depths, spec.widths, genome.stages)):
            planes = scaled(
                planes, width_mult, math.lcm(4, spec.groups)
            )  # grouped 3x3 needs divisible widths
            blocks = []
            for bi in range(depth):
                stride = 2 if (si > 0 and bi == 0) else 1
                hw_out = stride2_size(hw, genome.downsampling) if stride == 2 else hw
                # KernelWarehouse hand-over: the first block of stages 2+ lends its first conv and
                # shortcut to the previous stage's warehouse; ResNet-50's layer1.0.conv1 and layer1
                # shortcut stay static (their in-channels, 64, come from the stem).
                if bi == 0 and si > 0:
                    w_first = si - 1
                elif bi == 0 and si == 0 and kind == "bottleneck":
                    w_first = None
                else:
                    w_first = si
                plan = BlockPlan(si, bi, stride, hw, hw_out, genome.downsampling, spec.groups, w_first, si)
                blocks.append(
                    Block(kind, cin, planes, plan, st.plugins, st.fusion, convs, depth, recipe.drop_path)
                )
                cin, hw = planes * exp, hw_out
            sm = None
            if st.stage_module is not None:
                p = st.stage_module
                sm = registry.get(p.type).factory(cin, p.r, Site(si, depth - 1, "stage", hw, depth), **p.opts)
            stages.append(ResNetStage(blocks, sm))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.post_pool_norm = nn.BatchNorm2d(cin) if spec.post_pool_norm else nn.Identity()
        self.num_features = cin
        self.dropout = nn.Dropout(recipe.dropout) if recipe.dropout else None  # recipe, not architecture
        self.fc = nn.Linear(cin, num_classes)
        self._init_weights(recipe)
        convs.finalize(self)

    def _init_weights(self, recipe: Recipe):
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.weight.requires_grad:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if recipe.zero_conv_bias and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if (
            recipe.zero_init_residual
        ):  # every residual branch starts as nothing: each block an identity + ReLU
            for m in self.modules():
                if isinstance(m, Block):
                    nn.init.zeros_(m.last_bn.weight)

    def forward_features(self, x):
        """Backbone and global pool: what the paper convention counts."""
        x = self.pool(self.stages(self.stem(x)))
        return self.post_pool_norm(x).flatten(1)

    def forward(self, x):
        x = self.forward_features(x)
        return self.fc(x if self.dropout is None else self.dropout(x))
