"""DSM/DAM, MSA/MSAF/AFF/iAFF and SDA: sizes, fvcore counts, published totals, behaviour."""

import logging

import pytest
import torch
from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis
from torch import nn

from searchspace import catalog
from searchspace.plugins import Site, get, names
from searchspace.plugins.dsnet import DAM, DSM
from searchspace.plugins.msa import IAFF, MSA, MSAF, Branch
from searchspace.plugins.sda import SDA

# Published totals come from the catalog (docs/published.md); the baselines from the plain designs.
PUB = {
    n: catalog.get(n).counts
    for n in (
        "resnet50",
        "resnet18",
        "dsnet50_a",
        "dsnet50_b",
        "dsnet50_b_after_conv2",
        "msa_resnet18_r16",
        "msa_resnet18_r4",
        "msaf_resnet18_r16",
        "msaf_resnet18_r4",
        "aff_resnet18_r4",
        "iaff_resnet18_r4",
    )
}
R50 = {k: c.value for k, c in PUB["resnet50"].items()}

# ResNet-50 at 224: (planes, blocks, post-stride map side); ResNet-18 block output channels.
R50_STAGES = [(64, 3, 56), (128, 4, 28), (256, 6, 14), (512, 3, 7)]
R18_CHANNELS = [64, 64, 128, 128, 256, 256, 512, 512]


def nparams(m):
    return sum(p.numel() for p in m.parameters())


def fvcore_counts(module, *inputs):
    """(FLOPs, activations) under the paper convention: eval mode, batch 1."""
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    module.eval()
    out = []
    for cls in (FlopCountAnalysis, ActivationCountAnalysis):
        a = cls(module, inputs).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        out.append(a.total())
    return tuple(out)


def rand(c, h, w=None):
    return torch.randn(1, c, h, w or h)


def branch_size(C, c):
    return 2 * C * c + 3 * c + 3 * C


# -- parameters against the closed forms -------------------------------------------------------
@pytest.mark.parametrize("C,r", [(64, 16), (512, 2), (96, 5), (256, 4)])
@pytest.mark.parametrize("bias", [False, True])
def test_dsnet_params(C, r, bias):
    c, b = C // r, int(bias)
    assert nparams(DSM(C, r, bias)) == C * C + 7 * C * c + C + 4 * c + b * (1 + 3 * c + 2 * C)
    assert nparams(DAM(C, r, bias)) == C * C + 7 * C * c + 2 * C + 4 * c + b * (1 + 3 * c + C)


@pytest.mark.parametrize("C,r", [(64, 16), (128, 4), (96, 5)])
def test_msa_family_params(C, r):
    br = branch_size(C, C // r)
    assert nparams(MSA(C, r)) == 4 * br
    assert nparams(MSA(C, r, branches=5)) == 5 * br  # the P=16 branch is one more branch
    assert nparams(MSAF(C, r)) == 4 * br
    assert nparams(get("aff").factory(C, r, None)) == 2 * br
    assert nparams(IAFF(C, r)) == 3 * br  # two local branches + one shared global


@pytest.mark.parametrize("C,r,n", [(256, 16, 3), (2048, 16, 5), (512, 4, 2), (64, 16, 1)])
def test_sda_params(C, r, n):
    d = max(C // r, 64)
    assert nparams(SDA(C, n, r)) == C * d + 2 * d + n * (d * C + C)


# -- fvcore counts against the closed forms ---------------------------------------------------
@pytest.mark.parametrize("C,r,H,W", [(64, 16, 8, 8), (32, 2, 5, 7), (48, 4, 6, 3)])
@pytest.mark.parametrize("cls", [DSM, DAM])
def test_dsnet_fvcore(cls, C, r, H, W):
    c, N = C // r, H * W
    # convs C->c (x3), C->1, C->C; matmuls: two c-by-N contexts and the C-by-N outer product;
    # 1x1 convs c->C, C->c, c->2C; LayerNorm(c) counts 5c, eval BatchNorm(c) 2c.
    flops = N * (C * C + 3 * C * c + 2 * C + 2 * c) + 4 * C * c + 7 * c
    acts = N * (2 * C + 3 * c + 2) + 3 * C + 2 * c
    assert fvcore_counts(cls(C, r), rand(C, H, W)) == (flops, acts)


def _branch_flops(C, c, N, pool):
    """fvcore FLOPs and activations of one branch on an N-position map."""
    core = 2 * C * c + 2 * c + 2 * C  # two 1x1 convs + two eval BNs, per position
    if pool is None:
        return N * core, N * (c + C)
    side = pool * pool
    resample = C * N * (2 if pool > 1 else 1)  # adaptive pool reads N; nearest upsample writes N
    return side * core + resample, side * (c + C)


@pytest.mark.parametrize("C,r,H", [(32, 4, 8), (64, 16, 7), (48, 16, 16)])
@pytest.mark.parametrize("branches", [4, 5])
def test_msa_fvcore(C, r, H, branches):
    c, N = C // r, H * H
    pools = (None, 4, 8, 1) + ((16,) if branches == 5 else ())
    parts = [_branch_flops(C, c, N, p) for p in pools]
    expected = (sum(f for f, _ in parts), sum(a for _, a in parts))
    assert fvcore_counts(MSA(C, r, branches), rand(C, H)) == expected
    assert (
        fvcore_counts(get("msaf").factory(C, r, None, branches=branches), rand(C, H), rand(C, H)) == expected
    )


@pytest.mark.parametrize("C,r,H", [(32, 4, 8), (64, 16, 7)])
def test_aff_iaff_fvcore(C, r, H):
    c, N = C // r, H * H
    (lf, la), (gf, ga) = _branch_flops(C, c, N, None), _branch_flops(C, c, N, 1)
    x, y = rand(C, H), rand(C, H)
    assert fvcore_counts(get("aff").factory(C, r, None), x, y) == (lf + gf, la + ga)
    assert fvcore_counts(IAFF(C, r), x, y) == (2 * lf + 2 * gf, 2 * la + 2 * ga)  # global runs twice


@pytest.mark.parametrize("C,r,n,H", [(64, 16, 3, 8), (256, 16, 2, 5), (2048, 16, 3, 2)])
def test_sda_fvcore(C, r, n, H):
    d = max(C // r, 64)
    zs = [rand(C, H) for _ in range(n)]
    # global pool reads C*N; conv C->d, eval BN(d), n convs d->C
    assert fvcore_counts(SDA(C, n, r), zs) == (C * H * H + C * d + 2 * d + n * d * C, d + n * C)


# -- published totals, summed from standalone counts over the ResNet blocks --------------------
def _dsm_resnet50(r, bias, stages, pre_stride_first=False):
    """Param, FLOP and activation deltas of DSM at after_conv1/2 of the given ResNet-50 stages."""
    dp = df = da = 0
    for s, (planes, blocks, side) in enumerate(R50_STAGES):
        if s not in stages:
            continue
        m = DSM(planes, r, bias)
        f, a = fvcore_counts(m, rand(planes, side))
        dp, df, da = dp + blocks * nparams(m), df + blocks * f, da + blocks * a
        if pre_stride_first and s > 0:  # after_conv1 of a strided block sees the 2x larger map
            f0, a0 = fvcore_counts(m, rand(planes, 2 * side))
            df, da = df + f0 - f, da + a0 - a
    return dp, df, da


def test_dsnet50_a_published():
    dp, df, _ = _dsm_resnet50(r=2, bias=True, stages={3})
    assert (dp, df) == (3_548_931, 98_141_952)
    assert PUB["dsnet50_a"]["params"].exact and PUB["dsnet50_a"]["flops"].exact
    assert R50["params"] + dp == PUB["dsnet50_a"]["params"].value
    assert R50["flops"] + df == PUB["dsnet50_a"]["flops"].value


def test_dsnet50_b_published():
    dp, df, da = _dsm_resnet50(r=16, bias=False, stages={0, 1, 2, 3})
    at_conv2 = PUB["dsnet50_b_after_conv2"]
    assert all(c.exact for c in at_conv2.values())
    assert R50["params"] + dp == at_conv2["params"].value
    assert R50["flops"] + df == at_conv2["flops"].value
    assert R50["activations"] + da == at_conv2["activations"].value
    # after_conv1 (the architecture table's placement): same params, 4.495 G to the printed precision
    dp1, df1, _ = _dsm_resnet50(r=16, bias=False, stages={0, 1, 2, 3}, pre_stride_first=True)
    assert R50["params"] + dp1 == PUB["dsnet50_b"]["params"].value
    assert df1 > df and PUB["dsnet50_b"]["flops"].matches(R50["flops"] + df1)


@pytest.mark.parametrize("r", [16, 4])
def test_msa_resnet18_published(r):
    base = PUB["resnet18"]["params"].value
    assert base + sum(nparams(MSA(C, r)) for C in R18_CHANNELS) == PUB[f"msa_resnet18_r{r}"]["params"].value
    assert base + sum(nparams(MSAF(C, r)) for C in R18_CHANNELS) == PUB[f"msaf_resnet18_r{r}"]["params"].value


def test_aff_iaff_resnet18_published():
    # only printed to 0.1 M; iAFF's 12.8 M counts the one global branch that runs
    base = PUB["resnet18"]["params"].value
    aff = get("aff").factory
    assert PUB["aff_resnet18_r4"]["params"].matches(
        base + sum(nparams(aff(C, 4, None)) for C in R18_CHANNELS)
    )
    assert PUB["iaff_resnet18_r4"]["params"].matches(base + sum(nparams(IAFF(C, 4)) for C in R18_CHANNELS))


# -- training behaviour on tiny inputs ---------------------------------------------------------
def _tiny_modules():
    site = Site(stage=0, block=0, position="after_add", target_hw=8, num_blocks=3)
    cases = [
        ("dsm", dict(bias=True), 1),
        ("dam", {}, 1),
        ("msa", {}, 1),
        ("msa", dict(branches=5), 1),
        ("msaf", {}, 2),
        ("msaf", dict(branches=5), 2),
        ("aff", {}, 2),
        ("iaff", {}, 2),
        ("sda", {}, None),
    ]
    return [
        pytest.param(get(n).factory(32, 4, site, **o), arity, id="-".join([n, *map(str, o.values())]))
        for n, o, arity in cases
    ]


@pytest.mark.parametrize("module,arity", _tiny_modules())
def test_forward_backward(module, arity):
    torch.manual_seed(0)
    module.train()
    if arity is None:
        inputs = ([torch.randn(2, 32, 8, 8, requires_grad=True) for _ in range(3)],)
    else:
        inputs = tuple(torch.randn(2, 32, 8, 8, requires_grad=True) for _ in range(arity))
    out = module(*inputs)
    assert out.shape == (2, 32, 8, 8) and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    # A conv bias right before a training-mode BatchNorm has a zero gradient in exact arithmetic (the
    # norm removes it); any other parameter that gets none is disconnected.
    before_norm = {
        f"{name}.{i}.bias"
        for name, seq in module.named_modules()
        if isinstance(seq, nn.Sequential)
        for i, following in enumerate(list(seq)[1:])
        if isinstance(following, nn.BatchNorm2d)
    }
    for pname, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        if pname not in before_norm:
            assert p.grad.abs().sum() > 0, pname


def test_registry_entries():
    assert {"dsm", "dam", "msa", "msaf", "aff", "iaff", "sda"} <= set(names())
    for n in ("dsm", "dam"):
        info = get(n)
        assert (info.kind, info.default_r, info.options) == ("block", 16, {"bias": (False, True)})
        assert info.positions == ("after_conv1", "after_conv2", "after_conv3", "after_add")
    assert get("msa").positions == ("after_add",) and get("msa").options == {"branches": (4, 5)}
    assert get("msaf").options == {"branches": (4, 5)}
    assert {get(n).kind for n in ("msaf", "aff", "iaff")} == {"fusion"}
    assert (get("sda").kind, get("sda").default_r) == ("stage", 16)


def test_iaff_has_one_global_branch():
    m = IAFF(64, 4)
    pools = [b.pool for b in m.modules() if isinstance(b, Branch)]
    assert sorted(pools, key=str) == sorted([None, None, 1], key=str)


@torch.no_grad()
def test_gate_identities():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 8, 8)
    # DSM adds one vector per channel: out - x is constant over positions
    d = DSM(32, 4).eval()(x) - x
    assert torch.allclose(d, d[..., :1, :1].expand_as(d), atol=1e-6)
    # gates: DAM scales by (0, 1), MSA by (0, 2)
    assert (DAM(32, 4).eval()(x).abs() <= x.abs()).all()
    assert (MSA(32, 4).eval()(x).abs() <= 2 * x.abs() + 1e-6).all()
    # fusing a map with itself: the MSAF/AFF weights cancel to 2x, iAFF's to x
    assert torch.allclose(MSAF(32, 4).eval()(x, x), 2 * x, atol=1e-5)
    assert torch.allclose(get("aff").factory(32, 4, None).eval()(x, x), 2 * x, atol=1e-5)
    assert torch.allclose(IAFF(32, 4).eval()(x, x), x, atol=1e-5)
    # SDA weights sum to 1 over depth: equal block outputs give ReLU of that output
    m = SDA(32, 3).eval()
    assert torch.allclose(m([x, x, x]), torch.relu(x), atol=1e-5)
    with pytest.raises(ValueError, match="3 blocks"):
        m([x, x])
