"""Downsampling styles and stems change shapes, parameters and FLOPs as docs/modules.md says."""

import pytest
import torch
from torch import nn

from searchspace import Genome, build, catalog, cost
from searchspace.backbones.resnet import BlurPool, PaddingFreeConv
from searchspace.backbones.specs import RESNET_DOWNSAMPLING, RESNET_STEMS

BASE = cost(Genome("resnet50"))


def stage_sizes(genome, resolution=224):
    model = build(genome).eval()
    sizes = []
    for stage in model.stages:
        stage.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    with torch.no_grad():
        model(torch.zeros(1, 3, resolution, resolution))
    return sizes


def test_v15_maps_halve():
    assert stage_sizes(Genome("resnet50")) == [56, 28, 14, 7]


def test_padding_free_maps_shrink_faster_and_cost_less():
    g = Genome("resnet50", downsampling="padding_free")
    assert stage_sizes(g) == [56, 27, 13, 6]  # floor((H - 3) / 2) + 1
    m = build(g)
    first = m.stages[1].blocks[0]
    assert isinstance(first.conv2, PaddingFreeConv) and first.conv2.conv.padding == (0, 0)
    assert isinstance(first.conv2.pool, nn.MaxPool2d) and isinstance(first.conv2.proj, nn.Identity)
    dw, bn1, pw, bn2 = first.shortcut  # depthwise 3x3 s2 p0 -> BN -> 1x1 -> BN
    assert (dw.groups, dw.kernel_size, dw.stride, dw.padding) == (256, (3, 3), (2, 2), (0, 0))
    assert isinstance(bn1, nn.BatchNorm2d) and pw.kernel_size == (1, 1) and isinstance(bn2, nn.BatchNorm2d)
    c = cost(g)
    # the shortcut gains a depthwise conv and a BN per strided stage; the 1x1 loses its stride only
    assert c.params - BASE.params == sum(9 * cin + 2 * cin for cin in (256, 512, 1024))
    assert c.flops < 0.9 * BASE.flops


def test_padding_free_basic_block_projects_the_pool_branch():
    m = build(Genome("resnet18", downsampling="padding_free"))
    conv = m.stages[1].blocks[0].conv1
    assert isinstance(conv, PaddingFreeConv) and conv.proj.kernel_size == (1, 1)  # 64 -> 128 channels


def test_v1_moves_the_stride_to_the_first_1x1():
    m = build(Genome("resnet50", downsampling="v1"))
    block = m.stages[1].blocks[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    c = cost(Genome("resnet50", downsampling="v1"))
    assert c.params == BASE.params
    assert abs(c.flops - 3.86e9) / 3.86e9 < 0.01  # "about 3.86 G MACs"


def test_avgdown_is_resnet_d_shortcut():
    m = build(Genome("resnet50", downsampling="avgdown"))
    pool, conv, _ = m.stages[2].blocks[0].shortcut
    assert isinstance(pool, nn.AvgPool2d) and pool.ceil_mode and not pool.count_include_pad
    assert conv.stride == (1, 1)
    assert cost(Genome("resnet50", downsampling="avgdown")).params == BASE.params


def test_blur_adds_fixed_filters_only():
    g = Genome("resnet50", downsampling="blur")
    m = build(g)
    blurs = [x for x in m.modules() if isinstance(x, BlurPool)]
    assert len(blurs) == 1 + 3 * 2  # stem max-pool, and each strided stage's main path and shortcut
    block = m.stages[1].blocks[0]
    assert block.conv2.stride == (1, 1) and isinstance(block.down2, BlurPool)  # conv-BN-ReLU, then blur
    assert isinstance(block.shortcut[0], BlurPool)
    k = blurs[0].kernel[0, 0]
    assert torch.allclose(k, torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64)
    assert cost(g).params == BASE.params  # filters are buffers
    assert stage_sizes(g) == [56, 28, 14, 7]
    # the strided 3x3 now runs at the pre-stride resolution, and the blurs are convolutions too
    assert cost(g).flops > BASE.flops + sum(
        9 * p * p * (hw * hw - hw * hw // 4) for p, hw in ((128, 56), (256, 28), (512, 14))
    )


def test_stems():
    deep = cost(Genome("resnet50", stem="deep"))
    # three 3x3 conv-BN-ReLU (32, 32, 64) replace the 7x7 conv-BN
    assert deep.params - BASE.params == (3 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 2 * 128) - (
        3 * 64 * 49 + 128
    )
    hybrid = cost(Genome("resnet50", stem="hybrid"))
    # 3x3 conv + BN, depthwise 3x3 + BN, 1x1 128->64 + BN
    assert hybrid.params - BASE.params == (3 * 64 * 9 + 128 + 64 * 9 + 128 + 128 * 64 + 128) - (
        3 * 64 * 49 + 128
    )
    for stem in RESNET_STEMS:
        assert stage_sizes(Genome("resnet50", stem=stem)) == [56, 28, 14, 7]


@pytest.mark.parametrize("style", RESNET_DOWNSAMPLING)
def test_styles_combine_with_plugin_placements(style):
    for name in ("dsnet50_c", "fcanet50"):
        g = Genome("resnet50", catalog.get(name).genome.stages, stem="deep", downsampling=style).validate()
        m = build(g, num_classes=10, width_mult=0.25)
        out = m(torch.randn(2, 3, 64, 64))
        out.sum().backward()
        assert out.shape == (2, 10) and all(p.grad is not None for p in m.parameters())


def test_cifar_resnet20_keeps_32px_until_stage_2():
    assert stage_sizes(Genome("resnet20_cifar"), 32) == [32, 16, 8]
    assert stage_sizes(Genome("resnet20_cifar", downsampling="padding_free"), 32) == [32, 15, 7]


def test_sda_stage_with_after_add_plugin_uses_every_parameter():
    from searchspace import Stage, make_plugin

    st = Stage(plugins=(make_plugin("se", "after_add", 4),), stage_module=make_plugin("sda", "stage", 16))
    g = Genome("resnet18", (st, Stage(), Stage(), Stage())).validate()
    m = build(g, num_classes=10, width_mult=0.25)
    m(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_grouped_backbone_builds_at_any_proxy_width():
    """Proxy widths are rounded so that every grouped 3x3 conv keeps its 8 groups."""

    def groups(m):
        return [c.groups for c in m.modules() if isinstance(c, nn.Conv2d) and c.groups > 1]

    full = groups(build(Genome("resnet86g8"), num_classes=10))
    assert full and set(full) == {8}
    for w in (0.3, 0.15, 0.5):
        m = build(Genome("resnet86g8"), num_classes=10, width_mult=w)
        assert groups(m) == full
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_msca_folds_the_pooling_into_its_filters():
    """At a proxy resolution FcaNet pools the map to the filter size; folding that pool into the
    filters must give the same gate (pooling is linear)."""
    from torch.nn import functional as F

    from searchspace.plugins.msca import MultiSpectralAttention

    m = MultiSpectralAttention(64, 16, 56).double()
    for size in ((16, 16), (56, 56), (100, 90), (7, 9)):
        x = torch.randn(2, 64, *size, dtype=torch.float64)
        pooled = x if size == (56, 56) else F.adaptive_avg_pool2d(x, 56)
        gate = m.fc((pooled * m.dct).sum((2, 3))).sigmoid()[:, :, None, None]
        assert torch.allclose(m(x), x * gate, atol=1e-12)


def test_a_backbone_added_with_one_spec_is_searched_built_and_costed(monkeypatch):
    """The README's "Adding a backbone": one add_backbone_spec call; its builder may live anywhere."""
    from searchspace.backbones import specs

    monkeypatch.setitem(
        specs.BACKBONE_SPECS,
        "resnet26_test",
        specs.BackboneSpec(
            "resnet26_test",
            "resnet",
            "bottleneck",
            (2, 2, 2, 2),
            (64, 128, 256, 512),
            builder="searchspace.backbones.resnet:ResNet",
        ),
    )
    g = Genome.from_dict(
        {
            "backbone": "resnet26_test",
            "stages": [{"plugins": [{"type": "se", "position": "after_conv3"}]}] * 4,
        }
    )
    model = build(g, num_classes=10, width_mult=0.125)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    blocks = [m for m in model.modules() if type(m).__name__ == "Block"]
    assert len(blocks) == 8
    plain = cost(Genome("resnet26_test"), resolution=224, num_classes=1000)
    assert 0 < plain.flops < cost(Genome("resnet50"), resolution=224, num_classes=1000).flops
    assert cost(g, resolution=224, num_classes=1000).params > plain.params
