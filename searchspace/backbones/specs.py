"""The backbone registry: what each backbone offers to a genome, as plain data.

No torch here: genome validation reads these specs before any model code is imported. Each spec
names its builder as "module:callable", imported only when a network is built, so adding a
backbone is one `add_backbone_spec` call (plus its builder), and nothing dispatches on names.
"""

from __future__ import annotations

from dataclasses import dataclass

RESNET_STEMS = ("standard", "deep", "hybrid")
RESNET_DOWNSAMPLING = ("v1.5", "v1", "avgdown", "blur", "padding_free")
MOBILENET_DOWNSAMPLING = ("standard", "padding_free")


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # "resnet" | "mobilenet": which map-size rule and recipe fields apply
    block: str  # "basic" | "bottleneck" | "inverted"
    depths: tuple[int, ...]  # blocks per searchable stage
    widths: tuple[int, ...]  # planes per stage (before expansion)
    stems: tuple[str, ...] = RESNET_STEMS
    downsampling: tuple[str, ...] = RESNET_DOWNSAMPLING
    groups: int = 1  # grouped 3x3 (SDA-ResNet-86 uses 8)
    post_pool_norm: bool = False  # a BatchNorm on the pooled features (SDA-ResNet-86)
    target_resolution: int = 224
    target_classes: int = 1000
    supports_plugins: bool = True  # block, fusion and stage modules (the MobileNet builders place none)
    supports_kw: bool = True  # KernelWarehouse budgets
    stem_stride: int = 4  # 7x7/2 + max-pool; 1 for the CIFAR stems
    channel_mult: float = 1.0  # MobileNetV2's width multiplier (0.5x)
    # "module:callable" that builds it: f(genome, spec, num_classes, width_mult, convs, recipe)
    builder: str = "searchspace.backbones.resnet:ResNet"

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    def last_map_size(self, resolution: int, downsampling: str) -> int:
        """Side of the last stage's map at `resolution` (ResNets; padding-free maps shrink faster,
        floor((H - 3) / 2) + 1 per stride-2 step). MobileNets: their own rule, >= 64 px for
        padding-free, so this returns 0 below it."""
        if self.family != "resnet":
            return 0 if downsampling == "padding_free" and resolution < 64 else resolution // 32
        h = resolution // self.stem_stride
        for _ in range(self.num_stages - 1):
            h = stride2_size(h, downsampling)
        return h


def stride2_size(hw: int, downsampling: str) -> int:
    """Map side after one stride-2 step of this downsampling style."""
    return (hw - 3) // 2 + 1 if downsampling == "padding_free" else (hw - 1) // 2 + 1


BACKBONE_SPECS: dict[str, BackboneSpec] = {}


def add_backbone_spec(spec: BackboneSpec) -> BackboneSpec:
    BACKBONE_SPECS[spec.name] = spec
    return spec


for _spec in (
    BackboneSpec("resnet18", "resnet", "basic", (2, 2, 2, 2), (64, 128, 256, 512)),
    BackboneSpec("resnet34", "resnet", "basic", (3, 4, 6, 3), (64, 128, 256, 512)),
    BackboneSpec("resnet50", "resnet", "bottleneck", (3, 4, 6, 3), (64, 128, 256, 512)),
    BackboneSpec("resnet101", "resnet", "bottleneck", (3, 4, 23, 3), (64, 128, 256, 512)),
    # SDA-xNet's ResNet-86: grouped 3x3 (groups=8) at standard widths, extra BN after the pool.
    BackboneSpec(
        "resnet86g8",
        "resnet",
        "bottleneck",
        (5, 6, 12, 5),
        (64, 128, 256, 512),
        groups=8,
        post_pool_norm=True,
    ),
    # CIFAR ResNet-20 as the padding-free paper counts it (0.278 M params at 100 classes): 1x1 conv +
    # BN shortcuts where the shape changes (He et al.'s option B), 3x3 stem at stride 1.
    # "hybrid" on CIFAR: the padding-free paper's stem mixer after a stride-1 3x3, no max-pool.
    BackboneSpec(
        "resnet20_cifar",
        "resnet",
        "basic",
        (3, 3, 3),
        (16, 32, 64),
        stems=("cifar", "hybrid"),
        downsampling=("v1.5", "padding_free"),
        target_resolution=32,
        target_classes=100,
        stem_stride=1,
    ),
    # MobileNets (backbones/mobilenet.py): "stages" are the KernelWarehouse sharing groups.
    BackboneSpec(
        "mobilenetv2_1x",
        "mobilenet",
        "inverted",
        (1, 2, 3, 4, 3, 4),
        (16, 24, 32, 64, 96, 160),
        stems=("standard",),
        downsampling=MOBILENET_DOWNSAMPLING,
        supports_plugins=False,
        builder="searchspace.backbones.mobilenet:build_mobilenet_v2",
    ),
    BackboneSpec(
        "mobilenetv2_0.5x",
        "mobilenet",
        "inverted",
        (1, 2, 3, 4, 3, 4),
        (8, 16, 16, 32, 48, 80),
        stems=("standard",),
        downsampling=MOBILENET_DOWNSAMPLING,
        supports_plugins=False,
        channel_mult=0.5,
        builder="searchspace.backbones.mobilenet:build_mobilenet_v2",
    ),
    BackboneSpec(
        "mobilenetv3_large_cifar",
        "mobilenet",
        "inverted",
        (1, 2, 3, 6, 3),
        (16, 24, 40, 112, 160),
        stems=("standard", "hybrid"),
        downsampling=MOBILENET_DOWNSAMPLING,
        target_resolution=32,
        target_classes=100,
        supports_plugins=False,
        supports_kw=False,
        builder="searchspace.backbones.mobilenet:build_mobilenet_v3_large_cifar",
    ),
):
    add_backbone_spec(_spec)
