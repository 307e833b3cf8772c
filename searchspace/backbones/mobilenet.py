"""MobileNetV2 (KernelWarehouse's ImageNet models) and MobileNetV3-large (the padding-free paper's CIFAR model).

MobileNetV2 follows torchvision's layout (channels rounded to multiples of 8, last conv 1280),
which is what the KernelWarehouse authors built on: 3,504,872 params at width 1.0.
Its KW *stages* (the genome's stages, one budget each) are the authors' six warehouse stages:

    stage 0: the 16-channel block        stage 3: the 64-channel blocks
    stage 1: the 24-channel blocks       stage 4: the 96-channel blocks
    stage 2: the 32-channel blocks       stage 5: the 160- and 320-channel blocks and the last 1x1

Within a stage the depthwise convs share one warehouse and the pointwise convs another (for b > 1
the expansion and projection 1x1s get a warehouse each, as in the authors' 4x models); the first
block of stages 1-5 hands all its convs to the previous stage's warehouses; the stem conv is KW too,
alone in its warehouse, with stage 0's budget; the classifier stays static. This reproduces the
authors' 1x and 4x models to the unit. (Their 1/2x MobileNetV2 is a hand-tuned variant with
per-warehouse ratios, static pointwise convs and a KW classifier; b < 1 here follows the generic
rule instead.)

MobileNetV3-large is the CIFAR model of the BSConv code the padding-free paper builds on: an input
BatchNorm, a stride-1 3x3 stem, stage strides 1, 1, 2, 2, 2, an expansion 1x1 in every block, SE
(squeeze C/4, hard-sigmoid) after the depthwise conv, a 960-channel last conv and no extra head
layer: 3,066,512 params and 68.5 M FLOPs (their counter) at 100 classes. Its genome stages are
those five stages; KernelWarehouse is not offered on it.

Downsampling "padding_free" (both networks): every stride-2 depthwise conv loses one pixel of
padding (3x3: 0, 5x5: 1) and a MaxPool2d(3, 2, 0) of its input is added after its activation.
Stem "hybrid" (MobileNetV3): 3x3 conv -> [depthwise 3x3 + BN + act] || [MaxPool 3/1/1] -> concat
-> 1x1 conv 2C -> C + BN + act.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

# MobileNetV2 rows: expansion t, channels c, blocks n, first stride s, KW stage.
V2_ROWS = (
    (1, 16, 1, 1, 0),
    (6, 24, 2, 2, 1),
    (6, 32, 3, 2, 2),
    (6, 64, 4, 2, 3),
    (6, 96, 3, 1, 4),
    (6, 160, 3, 2, 5),
    (6, 320, 1, 1, 5),
)

# MobileNetV3-large (BSConv CIFAR): per stage (kernel, activation, stride, [(mid, out, se), ...]).
V3_STAGES = (
    (3, "relu", 1, ((16, 16, 0),)),
    (3, "relu", 1, ((64, 24, 0), (72, 24, 0))),
    (5, "relu", 2, ((72, 40, 1), (120, 40, 1), (120, 40, 1))),
    (3, "hswish", 2, ((240, 80, 0), (200, 80, 0), (184, 80, 0), (184, 80, 0), (480, 112, 1), (672, 112, 1))),
    (5, "hswish", 2, ((672, 160, 1), (960, 160, 1), (960, 160, 1))),
)
V3_STEM, V3_LAST = 16, 960


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor`, never more than 10% below v (the TF MobileNet rule)."""
    r = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return r + divisor if r < 0.9 * v else r


def _act(kind: str) -> nn.Module:
    return {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish}[kind](inplace=True)


class ConvBNAct(nn.Sequential):
    def __init__(self, convs, cin, cout, k=1, stride=1, groups=1, act="relu6", padding=None, warehouse=None):
        padding = (k - 1) // 2 if padding is None else padding
        layers = [
            convs.conv(cin, cout, k, stride, padding, groups=groups, warehouse=warehouse),
            nn.BatchNorm2d(cout),
        ]
        super().__init__(*layers, *([_act(act)] if act else []))


class PaddingFreeDW(nn.Module):
    """Stride-2 depthwise conv with one pixel less padding, plus a max-pool of its input.

    Maps shrink to floor((H - 3) / 2) + 1; the pool branch keeps what the unpadded border loses.
    """

    def __init__(self, convs, c, k, act, warehouse=None):
        super().__init__()
        self.conv = ConvBNAct(convs, c, c, k, 2, c, act, padding=(k - 1) // 2 - 1, warehouse=warehouse)
        self.pool = nn.MaxPool2d(3, 2, 0)

    def forward(self, x):
        return self.conv(x) + self.pool(x)


class HardSqueezeExcite(nn.Module):
    """MobileNetV3 SE as in the BSConv models: squeeze C // 4, ReLU, hard-sigmoid gate."""

    def __init__(self, c: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // 4, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(c // 4, c, 1)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x):
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """[1x1 expand] -> depthwise k x k (strided) -> [SE] -> 1x1 project (linear); residual if shapes match.

    `warehouses` = (expand, depthwise, project) warehouse keys for the conv maker.
    """

    def __init__(
        self,
        convs,
        cin,
        mid,
        cout,
        k,
        stride,
        act,
        se=False,
        expand=True,
        padding_free=False,
        warehouses=(None, None, None),
    ):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        w_exp, w_dw, w_proj = warehouses
        layers = [ConvBNAct(convs, cin, mid, 1, act=act, warehouse=w_exp)] if expand else []
        if stride == 2 and padding_free:
            layers.append(PaddingFreeDW(convs, mid, k, act, warehouse=w_dw))
        else:
            layers.append(ConvBNAct(convs, mid, mid, k, stride, mid, act, warehouse=w_dw))
        if se:
            layers.append(HardSqueezeExcite(mid))
        layers += [convs.conv(mid, cout, 1, warehouse=w_proj), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class HybridStem(nn.Module):
    """Padding-free paper's stem (CIFAR MobileNetV3): conv, then a depthwise and a max-pool branch mixed by 1x1."""

    def __init__(self, convs, cout: int, act: str = "hswish"):
        super().__init__()
        self.conv = ConvBNAct(convs, 3, cout, 3, 1, act=act)
        self.dw = ConvBNAct(convs, cout, cout, 3, 1, cout, act=act)
        self.pool = nn.MaxPool2d(3, 1, 1)
        self.mix = ConvBNAct(convs, 2 * cout, cout, 1, act=act)

    def forward(self, x):
        x = self.conv(x)
        return self.mix(torch.cat([self.dw(x), self.pool(x)], 1))


class MobileNet(nn.Module):
    """Shared tail: features -> global pool -> (dropout) -> fc; `forward_features` is what FLOPs count."""

    def _finish(self, cin: int, num_classes: int, dropout: float, convs) -> None:
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.num_features = cin
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, 0, 0.01)
        nn.init.zeros_(self.fc.bias)
        convs.finalize(self)

    def forward_features(self, x):
        return self.pool(self.features(x)).flatten(1)

    def forward(self, x):
        return self.fc(self.dropout(self.forward_features(x)))


class MobileNetV2(MobileNet):
    def __init__(
        self,
        width: float,
        budgets: dict[int, float | None],
        downsampling: str,
        num_classes: int,
        convs,
        dropout: float = 0.2,
    ):
        super().__init__()
        pf = downsampling == "padding_free"

        def keys(stage):  # (expand, depthwise, project) warehouses of a KW stage
            b = budgets.get(stage)
            split = b is not None and b > 1
            return (stage, "pw0" if split else "pw"), (stage, "dw"), (stage, "pw1" if split else "pw")

        cin = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        layers = [ConvBNAct(convs, 3, cin, 3, 2, warehouse=(0, "stem"))]
        prev_stage = 0
        for t, c, n, s, stage in V2_ROWS:
            cout = make_divisible(c * width)
            for i in range(n):
                # KW hand-over: a row that opens a new stage lends its first block to the previous one.
                wh = prev_stage if (i == 0 and stage != prev_stage) else stage
                layers.append(
                    InvertedResidual(
                        convs,
                        cin,
                        int(round(cin * t)),
                        cout,
                        3,
                        s if i == 0 else 1,
                        "relu6",
                        expand=t != 1,
                        padding_free=pf,
                        warehouses=keys(wh),
                    )
                )
                cin = cout
            prev_stage = stage
        layers.append(ConvBNAct(convs, cin, last, 1, warehouse=keys(prev_stage)[2]))
        self.features = nn.Sequential(*layers)
        self._finish(last, num_classes, dropout, convs)


class MobileNetV3LargeCifar(MobileNet):
    def __init__(self, width: float, stem: str, downsampling: str, num_classes: int, convs):
        super().__init__()
        pf = downsampling == "padding_free"
        w = (lambda c: c) if width == 1.0 else (lambda c: max(8, int(c * width)))
        cin = w(V3_STEM)
        layers = [nn.BatchNorm2d(3)]  # BSConv's "data_bn" on the input image
        layers.append(
            HybridStem(convs, cin) if stem == "hybrid" else ConvBNAct(convs, 3, cin, 3, 1, act="hswish")
        )
        for k, act, stride, blocks in V3_STAGES:
            for i, (mid, cout, se) in enumerate(blocks):
                layers.append(
                    InvertedResidual(
                        convs,
                        cin,
                        w(mid),
                        w(cout),
                        k,
                        stride if i == 0 else 1,
                        act,
                        bool(se),
                        padding_free=pf,
                    )
                )
                cin = w(cout)
        last = V3_LAST if width <= 1.0 else int(V3_LAST * width)
        layers.append(ConvBNAct(convs, cin, last, 1, act="hswish"))
        self.features = nn.Sequential(*layers)
        self._finish(last, num_classes, 0.0, convs)


def _check_recipe(genome, recipe) -> None:
    # `build` has already refused plugins (and KW on V3) through the spec; the recipe is checked here
    for name in ("zero_init_residual", "drop_path"):
        if getattr(recipe, name):
            raise UserError(
                f"recipe.{name}: {getattr(recipe, name)!r} not supported on {genome.backbone} "
                "(ResNet backbones only; allowed here: false / 0)"
            )


def _with_dropout(model: nn.Module, recipe) -> nn.Module:
    if recipe.dropout is not None:  # MobileNetV2 defaults to 0.2, V3 (CIFAR) to none
        model.dropout = nn.Dropout(recipe.dropout) if recipe.dropout > 0 else nn.Identity()
    return model


def build_mobilenet_v2(genome, spec, num_classes: int, width_mult: float, convs, recipe) -> nn.Module:
    """MobileNetV2 at the spec's width (1x, 0.5x); `width_mult` narrows it further for proxy training."""
    _check_recipe(genome, recipe)
    budgets = {i: st.kw for i, st in enumerate(genome.stages)}
    return _with_dropout(
        MobileNetV2(spec.channel_mult * width_mult, budgets, genome.downsampling, num_classes, convs), recipe
    )


def build_mobilenet_v3_large_cifar(
    genome, spec, num_classes: int, width_mult: float, convs, recipe
) -> nn.Module:
    """MobileNetV3-Large for CIFAR; `width_mult` narrows it for proxy training."""
    _check_recipe(genome, recipe)
    return _with_dropout(
        MobileNetV3LargeCifar(width_mult, genome.stem, genome.downsampling, num_classes, convs), recipe
    )


__all__ = [
    "MobileNetV2",
    "MobileNetV3LargeCifar",
    "build_mobilenet_v2",
    "build_mobilenet_v3_large_cifar",
    "make_divisible",
]
