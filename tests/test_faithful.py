"""Behaviour the counts cannot see: what modules are fed, that nothing mutates what they hold, how
networks start (the recipe), and that none of it changes a genome's key or its counts."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from searchspace import Genome, Recipe, Stage, UserError, build, catalog, cost, make_plugin, uniform
from searchspace.backbones.resnet import Block, DropPath
from searchspace.plugins import registry
from searchspace.plugins.msa import IAFF, Branch

# Catalog genome keys as first stored: a network that did not change keeps its key, so stored
# studies and results keyed by genome stay valid.
STORED_KEYS = {
    "resnet18": "de206f870442",
    "resnet34": "810daae29a9c",
    "resnet50": "f3f61609fb88",
    "se_resnet18": "0cb43d0eebff",
    "se_resnet50": "9f14c0119353",
    "fcanet50": "1d18356a4892",
    "dsnet50_a": "0eeecbcb3697",
    "dsnet50_b": "9af7a316782f",
    "dsnet50_b_after_conv2": "b85bea5ae850",
    "dsnet50_c": "e1d303021563",
    "msa_resnet18_r16": "491042545824",
    "msaf_resnet18_r16": "52662c883d30",
    "msa_resnet18_r4": "fb3982acbb97",
    "msaf_resnet18_r4": "0520deb307f6",
    "aff_resnet18_r4": "192eb279fdc8",
    "iaff_resnet18_r4": "699c4940311f",
    "sda_resnet86": "7d28a19a8811",
    "kw_resnet18_1d4x": "752be5efa94b",
    "kw_resnet18_1d2x": "f31e683896d0",
    "kw_resnet18_1x": "8b91a192b9fa",
    "kw_resnet18_2x": "ff1f5dc495b1",
    "kw_resnet18_4x": "7d762c6f0868",
    "kw_resnet50_1d2x": "becbbf485de6",
    "kw_resnet50_1x": "a06ed5bfa5b0",
    "kw_resnet50_4x": "79c5a22376ce",
    "kw_mobilenetv2_1x": "2f83ae6ce93a",
    "kw_mobilenetv2_4x": "8e5eb0e284b6",
    "mobilenetv3_large_cifar": "56d05099a57b",
    "pfd_mobilenetv3_large_cifar": "170a8c78a5fe",
    "resnet50_v1c": "9b688e874309",
    "resnet50_d": "1364c0f3ac85",
    "resnet20_cifar": "d4e7379f4335",
    "pfd_resnet20_cifar": "a026247fb489",
}


class RecordingStage(nn.Module):
    """A stage module that keeps a copy of the maps it is handed, and ReLUs the last one."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, zs):
        self.seen = [z.detach().clone() for z in zs]
        return F.relu(zs[-1])


class SelectFusion(nn.Module):
    """A fusion that hands back one of its inputs unchanged (a hard gate choosing the branch)."""

    def forward(self, x, identity):
        return x


@pytest.fixture
def test_plugins():
    registry.register("record_stage", kind="stage", default_r=None)(lambda c, r, site: RecordingStage())
    registry.register("select_fusion", kind="fusion", default_r=None)(lambda c, r, site: SelectFusion())
    yield
    registry.unregister("record_stage")
    registry.unregister("select_fusion")


def _by_hand(block: Block, x):
    """A BasicBlock's pre-ReLU output computed from its layers, not from its forward."""
    out = F.relu(block.bn1(block.conv1(x)))
    return block.bn2(block.conv2(out)) + block.shortcut(x)


def test_stage_module_receives_pre_relu_maps(test_plugins):
    torch.manual_seed(0)
    g = Genome("resnet18", (Stage(stage_module=make_plugin("record_stage")), Stage(), Stage(), Stage()))
    model = build(g, 10, 0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
        h = model.stem(x)
        expected = []
        for block in model.stages[0].blocks:
            expected.append(_by_hand(block, h))
            h = F.relu(expected[-1])
    seen = model.stages[0].stage_module.seen
    assert len(seen) == len(expected) == 2
    for z_seen, z in zip(seen, expected):
        assert (z < 0).any()  # a pre-ReLU map: a post-ReLU one would have lost these
        torch.testing.assert_close(z_seen, z)


def _all_positions(backbone):
    positions = ["after_conv1", "after_conv2", "after_add"] + (
        ["after_conv3"] if backbone == "resnet50" else []
    )
    plugins = tuple(make_plugin("se", p, 4) for p in positions)
    stages = [
        Stage(plugins=plugins, fusion=make_plugin("select_fusion")),
        Stage(plugins=plugins, fusion=make_plugin("msaf", r=4)),
        Stage(plugins=(make_plugin("dsm", "after_conv2", 4),), stage_module=make_plugin("sda", r=4)),
        Stage(
            plugins=(make_plugin("msa", "after_add", 4),),
            fusion=make_plugin("iaff", r=4),
            stage_module=make_plugin("record_stage"),
        ),
    ]
    return Genome(backbone, tuple(stages))


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
@pytest.mark.parametrize("train", [False, True])
def test_no_inplace_op_changes_a_handed_map(test_plugins, backbone, train):
    """Every plugin, fusion and stage module's inputs are unchanged after the whole forward and backward."""
    torch.manual_seed(0)
    model = build(_all_positions(backbone), 10, 0.25).train(train)
    handed = []

    def keep(module, args):
        for a in args:
            for t in a if isinstance(a, (list, tuple)) else [a]:
                handed.append((type(module).__name__, t, t.detach().clone()))

    hooked = [
        m
        for blk in model.modules()
        if isinstance(blk, Block)
        for m in [*blk.plugins.values(), blk.fusion]
        if m is not None
    ]
    hooked += [st.stage_module for st in model.stages if st.stage_module is not None]
    for m in hooked:
        m.register_forward_pre_hook(keep)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    kinds = {name for name, _, _ in handed}
    assert {"SqueezeExcite", "SelectFusion", "MSAF", "DSM", "SDA", "MSA", "IAFF", "RecordingStage"} <= kinds
    changed = [name for name, t, copy in handed if not torch.equal(t.detach(), copy)]
    assert not changed, f"maps changed after being handed to {sorted(set(changed))}"


def test_sda_resnet86_counts_unchanged():
    g = catalog.get("sda_resnet86").genome
    assert cost(g, "conv_linear").params == 27_219_880
    assert cost(g, "conv_linear").flops == 3_880_021_224


def test_catalog_keys_unchanged():
    assert {d.name: d.genome.key for d in catalog.designs() if d.name in STORED_KEYS} == STORED_KEYS


# -- recipes ----------------------------------------------------------------------------------
def _last_bns(model):
    return [m.last_bn for m in model.modules() if isinstance(m, Block)]


def test_recipe_changes_neither_parameters_nor_evaluation():
    g = uniform("resnet18", make_plugin("dsm", "after_conv2", 4, bias=True))
    plain = build(g, 10, 0.25)
    dressed = build(
        g, 10, 0.25, Recipe(zero_init_residual=True, zero_conv_bias=True, dropout=0.3, drop_path=0.2)
    )
    assert [(k, v.shape) for k, v in plain.state_dict().items()] == [
        (k, v.shape) for k, v in dressed.state_dict().items()
    ]
    dressed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dressed.eval()(x), plain.eval()(x), rtol=0, atol=0)
    torch.manual_seed(1)
    with torch.no_grad():
        assert not torch.equal(dressed.train()(x), plain.train()(x))  # dropout and drop-path act in training


def test_zero_init_residual_and_zero_conv_bias():
    g = uniform("resnet50", make_plugin("dsm", "after_conv2", 4, bias=True))
    default = build(g, 10, 0.25)
    dsnet = build(g, 10, 0.25, Recipe(zero_init_residual=True, zero_conv_bias=True))
    assert all(bool((bn.weight == 1).all()) for bn in _last_bns(default))
    assert all(bool((bn.weight == 0).all()) for bn in _last_bns(dsnet))

    def biases(m):
        return [c.bias for c in m.modules() if isinstance(c, nn.Conv2d) and c.bias is not None]

    assert biases(dsnet) and all(bool((b == 0).all()) for b in biases(dsnet))
    assert any(bool((b != 0).any()) for b in biases(default))  # PyTorch's uniform start
    # Kaiming normal fan_out on the DSM convs under either recipe
    value = dsnet.stages[3].blocks[0].plugins["after_conv2"].value
    expected = math.sqrt(2.0 / value.out_channels)
    assert abs(value.weight.std().item() / expected - 1) < 6 / math.sqrt(2 * value.weight.numel())


def test_drop_path_per_sample():
    torch.manual_seed(0)
    dp = DropPath(0.5)
    y = dp(torch.ones(256, 3, 2, 2))
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert bool((per_sample == per_sample[:, :1]).all())  # a whole sample's branch is kept or dropped
    assert torch.equal(dp.eval()(torch.ones(4, 3)), torch.ones(4, 3))


def test_kw_start_temperature():
    g = catalog.get("kw_resnet18_1x").genome
    assert {float(m.tau) for m in build(g, 10, 0.25).modules() if hasattr(m, "set_temperature")} == {1.0}
    recipe = catalog.get("kw_resnet18_1x").recipe
    assert {float(m.tau) for m in build(g, 10, 0.25, recipe).modules() if hasattr(m, "set_temperature")} == {
        0.0
    }


def test_catalog_recipes():
    dsnet = [n for n in catalog.names() if n.startswith("dsnet50")]
    kw_resnet = [n for n in catalog.names() if n.startswith("kw_resnet")]
    assert dsnet and kw_resnet
    for n in dsnet:
        assert catalog.get(n).recipe == Recipe(zero_init_residual=True, zero_conv_bias=True)
    for n in kw_resnet:
        r = catalog.get(n).recipe
        assert (r.drop_path, r.dropout, r.kw_start_temperature, r.zero_init_residual) == (
            0.1,
            0.0,
            0.0,
            False,
        )
    for n in ("resnet50", "se_resnet50", "fcanet50", "sda_resnet86", "iaff_resnet18_r4", "msa_resnet18_r16"):
        assert (
            catalog.get(n).recipe == Recipe()
        )  # FcaNet, SENet, SDA-xNet, open-aff, takaniwa: torchvision's start


def test_trainer_builds_a_catalog_design_with_its_recipe():
    from trainers.train import build_model

    model = build_model("dsnet50_a", 10, 0.25)
    assert all(bool((bn.weight == 0).all()) for bn in _last_bns(model))
    model = build_model(catalog.get("dsnet50_a").genome, 10, 0.25)  # a bare genome: the default recipe
    assert all(bool((bn.weight == 1).all()) for bn in _last_bns(model))


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"dropout": 1.0}, "recipe.dropout: expected a number in [0, 1) or null, got 1.0"),
        ({"drop_path": -0.1}, "recipe.drop_path: expected a number in [0, 1), got -0.1"),
        ({"drop_path": "0.1"}, "recipe.drop_path: expected a number in [0, 1), got '0.1'"),
        ({"zero_init_residual": 1}, "recipe.zero_init_residual: expected true or false, got 1"),
        ({"kw_start_temperature": 2}, "recipe.kw_start_temperature: expected a number in [0, 1], got 2"),
        ({"warmup": 5}, "recipe: unknown field 'warmup'"),
    ],
)
def test_bad_recipe(fields, message):
    with pytest.raises(
        UserError,
        match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)"),
    ):
        Recipe.from_dict(fields)


def test_recipe_refused_where_the_backbone_has_no_residual_branches_to_act_on():
    with pytest.raises(UserError, match="recipe.drop_path: 0.1 not supported on mobilenetv2_1x"):
        build(Genome("mobilenetv2_1x"), 10, 0.25, Recipe(drop_path=0.1))


# -- iAFF: the PyTorch port by default, the MXNet original as an option -------------------------
def test_iaff_variants():
    C, r = 32, 4
    port, mxnet = IAFF(C, r), IAFF(C, r, "mxnet")

    def n(m):
        return sum(p.numel() for p in m.parameters())

    assert n(mxnet) == n(port) + n(Branch(C, r, pool=1))
    mxnet.load_state_dict(port.state_dict(), strict=False)
    x, y = torch.randn(2, C, 8, 8), torch.randn(2, C, 8, 8)
    with torch.no_grad():
        mxnet.glob2.load_state_dict(port.glob.state_dict())  # equal branches: the two variants agree
        torch.testing.assert_close(mxnet.eval()(x, y), port.eval()(x, y))
        nn.init.normal_(mxnet.glob2[1].weight)
        assert not torch.allclose(mxnet(x, y), port(x, y))
    g = uniform("resnet18", make_plugin("iaff", "fusion", 4, variant="mxnet"))
    assert g.key != catalog.get("iaff_resnet18_r4").genome.key
    assert Genome.from_json(g.to_json()) == g
    assert cost(g).params == 13_110_952 and cost(catalog.get("iaff_resnet18_r4").genome).params == 12_755_592
    explicit_port = uniform("resnet18", make_plugin("iaff", "fusion", 4, variant="port"))
    assert explicit_port.key == catalog.get("iaff_resnet18_r4").genome.key
