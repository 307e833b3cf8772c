"""Genome, space, registry, cost parity and the inspect command line."""

import json
import pickle
import subprocess
import sys

import optuna
import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from searchspace import (
    Genome,
    Plugin,
    Stage,
    UserError,
    build,
    catalog,
    cost,
    make_plugin,
    register,
    space,
    uniform,
)
from searchspace.plugins import registry
from searchspace.plugins.msca import MultiSpectralAttention, dct_filters
from searchspace.plugins.se import SqueezeExcite

# -- cost parity: every published count in the catalog, to the unit or to its printed precision ----
COUNTED = [(d.name, k) for d in catalog.designs() for k in d.counts]


@pytest.mark.parametrize("name,what", COUNTED)
def test_catalog_counts_match_published(name, what):
    d = catalog.get(name)
    c = cost(d.genome, d.target.convention, d.target.resolution, d.target.num_classes)
    published = d.counts[what]
    assert published.matches(getattr(c, what)), (name, what, getattr(c, what), published.value)


def test_exact_rows_are_exact():
    """The rows docs/published.md calls exact are held to the unit, not to a rounding step."""
    for name, what in [
        ("resnet50", "flops"),
        ("fcanet50", "flops"),
        ("dsnet50_a", "params"),
        ("dsnet50_b_after_conv2", "activations"),
        ("msaf_resnet18_r4", "params"),
    ]:
        assert catalog.get(name).counts[what].exact


def test_dsnet_rows_show_the_swap():
    """The seed prints each DSNet configuration's size on the other one's row: the catalog shows it."""
    a, b, b2 = (catalog.get(n) for n in ("dsnet50_a", "dsnet50_b", "dsnet50_b_after_conv2"))
    ca, cb2 = cost(a.genome), cost(b2.genome)
    row_a, row_b = a.results[0], b.results[0]
    assert (round(ca.params, -3), round(ca.flops, -6)) == (row_b.params, row_b.flops)  # A's size on row B
    assert (round(cb2.params, -3), round(cb2.flops, -6)) == (row_a.params, row_a.flops)  # B's on row A
    assert (round(ca.params, -3), round(ca.flops, -6)) != (row_a.params, row_a.flops)


# -- closed forms ----------------------------------------------------------------------------------
def fv(module, shape):
    f = FlopCountAnalysis(module.eval(), torch.zeros(shape))
    f.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return f.total()


@pytest.mark.parametrize("C,r,hw", [(64, 16, 56), (256, 4, 14), (96, 8, 7)])
def test_se_closed_form(C, r, hw):
    m = SqueezeExcite(C, r)
    c = C // r
    assert sum(p.numel() for p in m.parameters()) == 2 * C * c + c + C
    assert fv(m, (1, C, hw, hw)) == C * hw * hw + 2 * C * c  # squeeze (pool) + two 1x1 convs


@pytest.mark.parametrize("C,r,hw,x_hw", [(256, 16, 56, 56), (512, 4, 28, 28), (64, 16, 7, 14)])
def test_msca_closed_form(C, r, hw, x_hw):
    m = MultiSpectralAttention(C, r, hw)
    assert sum(p.numel() for p in m.parameters()) == 2 * C * (C // r)
    assert not any(n == "dct" for n, _ in m.named_parameters())
    m(torch.zeros(1, C, x_hw, x_hw))  # a map of another size: its pooled filters are made once, here
    # the DCT squeeze is a product and a sum, which fvcore does not count: only the two FCs remain
    assert fv(m, (1, C, x_hw, x_hw)) == 2 * C * (C // r)


def test_dct_filters_are_orthonormal_dct_ii():
    bank = dct_filters(16, 7, 7).double()
    flat = bank.flatten(1)
    assert torch.allclose(flat @ flat.T, torch.eye(16, dtype=torch.float64), atol=1e-5)  # 16 distinct bases
    assert torch.allclose(bank[0], torch.full((7, 7), 1 / 7.0, dtype=torch.float64), atol=1e-6)  # (0,0) = DC
    big = dct_filters(32, 14, 14)  # frequencies scale by h // 7 on larger maps
    assert torch.allclose(big[2 * 2].double().sum(), torch.tensor(0.0, dtype=torch.float64), atol=1e-5)


# -- every catalog model trains --------------------------------------------------------------------
@pytest.mark.parametrize("name", catalog.names())
def test_catalog_forward_backward(name):
    torch.manual_seed(0)
    d = catalog.get(name)
    model = build(d.genome, num_classes=10, width_mult=0.25).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_full_size_build_matches_proxy_structure():
    g = catalog.get("dsnet50_c").genome
    full, proxy = build(g), build(g, num_classes=10, width_mult=0.5)

    def names(m):
        return [type(x).__name__ for x in m.modules()]

    assert names(full) == names(proxy)
    assert full.fc.out_features == 1000 and proxy.fc.out_features == 10


# -- positions, chaining, fusion, stage modules -----------------------------------------------------
def test_after_conv1_vs_after_conv2_same_params_different_flops():
    g1 = uniform("resnet50", make_plugin("dsm", "after_conv1", 16))
    g2 = uniform("resnet50", make_plugin("dsm", "after_conv2", 16))
    c1, c2 = cost(g1), cost(g2)
    assert c1.params == c2.params and c1.flops > c2.flops  # pre-stride maps in the first block of stages 2-4


def test_plugins_chain_in_order():
    g = Genome(
        "resnet18",
        tuple(
            Stage(plugins=(make_plugin("se", "after_add", 4), make_plugin("msa", "after_add", 4)))
            for _ in range(4)
        ),
    ).validate()
    m = build(g, num_classes=10, width_mult=0.25)
    chain = m.stages[0].blocks[0].plugins["after_add"]
    assert [type(x).__name__ for x in chain] == ["SqueezeExcite", type(chain[1]).__name__] and len(chain) == 2
    solo = cost(uniform("resnet18", make_plugin("se", "after_add", 4))).params
    assert (
        cost(g).params
        == solo + cost(catalog.get("msa_resnet18_r4").genome).params - cost(Genome("resnet18")).params
    )


def test_stage_module_sees_every_block():
    seen = []

    class Probe(nn.Module):
        def forward(self, zs):
            seen.append(len(zs))
            return torch.relu(sum(zs))

    register("probe_stage", kind="stage", default_r=None)(lambda c, r, site: Probe())
    try:
        g = Genome(
            "resnet50", (Stage(), Stage(stage_module=Plugin("probe_stage", "stage")), Stage(), Stage())
        ).validate()
        build(g, num_classes=10, width_mult=0.25)(torch.randn(2, 3, 32, 32))
        assert seen == [4]
    finally:
        registry.unregister("probe_stage")


# -- genome ---------------------------------------------------------------------------------------
def test_genome_json_round_trip_and_key():
    for d in catalog.designs():
        again = Genome.from_json(d.genome.to_json())
        assert again == d.genome and again.key == d.genome.key
    # defaults are written out: a sparse JSON and the full one are the same genome
    sparse = Genome.from_json(
        '{"backbone": "resnet50", "stages": [{}, {}, {}, {"plugins": [{"type": "se", "position": "after_conv3"}]}]}'
    )
    assert sparse.stages[3].plugins[0].r == 16 and sparse.stem == "standard" and sparse.downsampling == "v1.5"
    assert sparse == Genome.from_json(sparse.to_json(indent=2))
    assert len({d.genome.key for d in catalog.designs()}) == len(catalog.names())


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"backbone": "vgg16"}', "backbone: unknown 'vgg16'"),
        ('{"backbone": "resnet50", "stages": [{}, {}]}', "resnet50 has 4 stages, the genome gives 2"),
        (
            '{"stages": [{"plugins": [{"type": "cbam", "position": "after_add"}]}, {}, {}, {}]}',
            "unknown plugin 'cbam'",
        ),
        (
            '{"stages": [{"plugins": [{"type": "msa", "position": "after_conv1"}]}, {}, {}, {}]}',
            "stages[0].plugins[0].position: 'after_conv1' is not supported by 'msa' (allowed: after_add)",
        ),
        (
            '{"stages": [{}, {"plugins": [{"type": "se", "position": "after_conv3", "r": 0}]}, {}, {}]}',
            "stages[1].plugins[0].r: 0 must be an integer >= 1",
        ),
        (
            '{"backbone": "resnet18", "stages": [{"plugins": [{"type": "se", "position": "after_conv3"}]}, {}, {}, {}]}',
            "'after_conv3' needs a Bottleneck backbone",
        ),
        ('{"stages": [{"kw": 3}, {}, {}, {}]}', "stages[0].kw: 3.0 is not a KernelWarehouse budget"),
        (
            '{"stages": [{"fusion": {"type": "se", "position": "after_add"}}, {}, {}, {}]}',
            "is a block module, not a fusion",
        ),
        ('{"stem": "giant"}', "stem: 'giant' is not available"),
        ('{"downsampling": "stride3"}', "downsampling: 'stride3' is not available"),
        (
            '{"stages": [{"plugins": [{"type": "dsm", "position": "after_add", "options": {"bias": 2}}]}, {}, {}, {}]}',
            "options.bias: 2 not allowed",
        ),
        (
            '{"stages": [{"plugins": [{"type": "se", "position": "after_add", "colour": 1}]}, {}, {}, {}]}',
            "unknown field 'colour'",
        ),
        ('{"backbone": "resnet50",', "genome JSON does not parse"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_validation_names_the_field(text, message):
    with pytest.raises(UserError, match=None) as e:
        Genome.from_json(text)
    assert message in str(e.value)


# -- space ------------------------------------------------------------------------------------------
WIDE = dict(
    backbone="resnet50",
    plugins=["none", "se", "msca", "dsm", "dam", "msa"],
    r=[2, 4, 8, 16],
    plugin_options={"dsm": {"bias": [False, True]}, "dam": {"bias": [False, True]}},
    stage_modules=["none", "sda"],
    fusions=["none", "msaf", "aff", "iaff"],
)


def test_catalog_genomes_round_trip_through_the_space():
    specs = [
        space.SpaceSpec.from_dict(WIDE),
        space.SpaceSpec.from_dict({**WIDE, "backbone": "resnet18", "r": [4, 16]}),
        space.SpaceSpec.from_dict({**WIDE, "backbone": "resnet86g8", "r": [16]}),
    ]
    inside = 0
    for d in catalog.designs():
        for spec in specs:
            if space.contains(spec, d.genome):
                inside += 1
                params = space.to_params(d.genome, spec)
                assert space.suggest(optuna.trial.FixedTrial(params), spec) == d.genome, d.name
    assert inside >= 14


def test_space_is_conditional_and_counted():
    spec = space.SpaceSpec.from_dict(
        {
            "backbone": "resnet18",
            "plugins": ["none", "se", "msa"],
            "r": [4, 16],
            "positions": ["after_conv2", "after_add"],
        }
    )
    # per stage: none + se (2 positions x 2 r) + msa (after_add x 2 r) = 7; 4 stages
    assert space.count(spec) == 7**4
    genomes = space.enumerate_genomes(spec)
    assert len(genomes) == 7**4 and len({g.key for g in genomes}) == 7**4
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        t = study.ask()
        g = space.suggest(t, spec)
        for i, st in enumerate(g.stages):
            if not st.plugins:  # r and position exist only where a plugin is placed
                assert not any(k.startswith(f"s{i}_") and k != f"s{i}_plugin" for k in t.params)
        study.tell(t, 0.0)


def test_space_rejects_bad_specs():
    for bad, msg in [
        ({"plugins": ["nope"]}, "space.plugins: 'nope'"),
        ({"r": [0]}, "space.r"),
        ({"backbone": "resnet18", "plugins": ["msca"], "positions": ["after_conv1"]}, "no position"),
        ({"kw": [3]}, "space.kw"),
        ({"colour": 1}, "space.colour: unknown key"),
    ]:
        with pytest.raises(UserError, match=None) as e:
            space.SpaceSpec.from_dict(bad)
        assert msg in str(e.value)


def test_user_registered_module_is_searchable():
    class ToyGate(nn.Module):
        def __init__(self, c, r):
            super().__init__()
            self.fc = nn.Linear(c, c // r)
            self.back = nn.Linear(c // r, c)

        def forward(self, x):
            return x * self.back(self.fc(x.mean((2, 3)))).sigmoid()[:, :, None, None]

    @register("toy_gate", positions=("after_add", "after_conv2"), options={"flavour": ("plain", "spicy")})
    def toy_gate(channels, r, site, flavour="plain"):
        return ToyGate(channels, r)

    try:
        spec = space.SpaceSpec.from_dict(
            {
                "backbone": "resnet18",
                "plugins": ["none", "toy_gate"],
                "r": [8],
                "plugin_options": {"toy_gate": {"flavour": ["plain", "spicy"]}},
            }
        )
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        genomes = [space.suggest(study.ask(), spec) for _ in range(12)]
        used = [g for g in genomes if any(s.plugins for s in g.stages)]
        assert used
        g = used[0]
        assert Genome.from_json(g.to_json()) == g
        assert space.suggest(optuna.trial.FixedTrial(space.to_params(g, spec)), spec) == g
        n_gates = sum(len(s.plugins) * 2 for s in g.stages)  # 2 blocks per ResNet-18 stage
        assert n_gates > 0
        assert cost(g).params > cost(Genome("resnet18")).params
        build(g, num_classes=10, width_mult=0.25)(torch.randn(2, 3, 32, 32)).sum().backward()
    finally:
        registry.unregister("toy_gate")
    with pytest.raises(UserError, match="unknown plugin 'toy_gate'"):  # the parse cache forgets it too
        Genome.from_json(g.to_json())


def test_a_genome_is_parsed_and_checked_once_per_process():
    text = catalog.get("dsnet50_c").genome.to_json()
    g = Genome.from_json(text)
    assert Genome.from_json(text) is g and g.validate() is g  # one parse per text, one check per object
    sent = pickle.loads(pickle.dumps(g))  # another process checks it again (its registry may differ)
    assert sent == g and sent.key == g.key and "_valid" not in sent.__dict__ and sent.validate() is sent
    bad = Genome("resnet18", (Stage(kw=3.0),) * 4)
    for _ in range(2):  # a failed check is not remembered
        with pytest.raises(UserError, match="not a KernelWarehouse budget"):
            bad.validate()


# -- inspect ----------------------------------------------------------------------------------------
def run_inspect(*args):
    return subprocess.run(
        [sys.executable, "-m", "searchspace.inspect", *args], capture_output=True, text=True
    )


def test_inspect_list_and_json():
    r = run_inspect("--list")
    assert r.returncode == 0 and r.stdout.split() == catalog.names()
    r = run_inspect("fcanet50", "--json")
    out = json.loads(r.stdout)
    assert {"name", "params", "flops", "activations", "published"} <= set(out)
    assert out["flops"] == 4_111_979_520 and out["published"]["counts"]["flops"]["match"] is True
    r = run_inspect(catalog.get("se_resnet18").genome.to_json(), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["published"] is None


@pytest.mark.parametrize(
    "args",
    [
        ["nope"],
        ["--bogus"],
        ['{"backbone": "vgg"}'],
        ["resnet50", "--convention", "x"],
        ["resnet50", "--resolution", "8"],
        [],
    ],
)
def test_inspect_bad_input_one_line_exit_2(args):
    r = run_inspect(*args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")


def test_full_convention_adds_what_fvcore_skips():
    plain, se = Genome("resnet50"), catalog.get("se_resnet50").genome

    def extra(g):
        return cost(g, "full").flops - cost(g).flops

    # ResNet-50: every ReLU, residual add and the stem max-pool are now counted
    assert extra(plain) > 11_000_000
    # SE adds its sigmoid and the gating multiply on every Bottleneck output
    assert extra(se) - extra(plain) >= sum(
        4 * p * hw * hw * n for p, hw, n in ((64, 56, 3), (128, 28, 4), (256, 14, 6), (512, 7, 3))
    )


def test_kw_kernel_assembly_is_counted_by_full_only():
    """docs/modules.md: the paper count leaves out attention @ warehouse; `full` adds it."""
    from searchspace.backbones.kernelwarehouse import kw_assembly_macs

    kw = catalog.get("kw_resnet18_1x").genome
    assembly = kw_assembly_macs(build(kw))
    static = cost(Genome("resnet18")).flops
    # paper: the static convs plus the small attention heads only
    assert 0 < cost(kw).flops - static < 0.01 * static
    assert cost(kw, "full").flops - cost(kw).flops >= assembly


@pytest.mark.parametrize("plugin", ["se", "msca", "dsm", "dam", "msa"])
def test_plugins_build_at_narrow_proxy_width(plugin):
    """At width 1/8 a stage has 8 channels: r=16 must still leave one hidden channel."""
    g = uniform("resnet50", make_plugin(plugin, "after_add" if plugin == "msa" else "after_conv3", 16))
    out = build(g, num_classes=4, width_mult=0.125)(torch.randn(2, 3, 64, 64))
    assert torch.isfinite(out).all()
