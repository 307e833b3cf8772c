"""KernelWarehouse convs, the MobileNets, the bsconv counter: behaviour and published sizes."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from searchspace import catalog
from searchspace.backbones.kernelwarehouse import KernelWarehouseConvs, KWConv2d, kw_assembly_macs, kw_convs
from searchspace.build import build, set_kw_epoch
from searchspace.counters import hook_flops
from searchspace.errors import UserError
from searchspace.genome import Genome, Stage, make_plugin
from searchspace.plugins.forms import counted_forms


def nparams(m):
    return sum(p.numel() for p in m.parameters())


class Toy(nn.Module):
    """Three KW convs sharing warehouse 0 (one strided, one 1x1), a depthwise one in 1, a static stem."""

    def __init__(self, budgets, nonlocal_basis=False):
        super().__init__()
        mk = KernelWarehouseConvs(budgets, nonlocal_basis=nonlocal_basis)
        self.stem = mk.conv(3, 64, 3, 1, 1)  # warehouse None: static
        self.a = mk.conv(64, 128, 3, 2, 1, warehouse=0)
        self.b = mk.conv(128, 128, 3, 1, 1, warehouse=0)
        self.c = mk.conv(64, 128, 1, 2, 0, warehouse=0, bias=True)
        self.dw = mk.conv(128, 128, 3, 1, 1, groups=128, warehouse=(1, "dw"))
        mk.finalize(self)

    def forward(self, x):
        x = self.stem(x)
        return self.dw(self.b(self.a(x)) + self.c(x))


def one_hot_kernel(conv: KWConv2d) -> torch.Tensor:
    """The static kernel a KW conv assembles at tau = 1, built cell by cell from beta (independently)."""
    e = conv.warehouse_weight.detach()
    n, co, ci = e.shape
    cout, cin_g, kh, kw = conv.weight_shape
    beta = conv.attention.beta
    w = torch.zeros(conv.weight_shape)
    i = 0
    for s in range(kh * kw):
        for o in range(cout // co):
            for j in range(cin_g // ci):
                col = int(beta[i].argmax())
                if col < n:
                    w[o * co : (o + 1) * co, j * ci : (j + 1) * ci, s // kw, s % kw] = e[col]
                i += 1
    return w


# -- sizes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "b, cell, n", [(1.0, (128, 64), 28), (0.5, (64, 32), 56), (4.0, (128, 64), 112), (0.25, (64, 32), 28)]
)
def test_cell_and_warehouse_sizes(b, cell, n):
    # members 64->128 3x3, 128->128 3x3, 64->128 1x1: gcd (128, 64); halved cells when b < 1.
    # b >= 1: m = 9 + 18 + 1 = 28 cells; b < 1: m = 36 + 72 + 4 = 112.
    net = Toy({0: b, 1: 1.0})
    w = net.kw_warehouses.weights[0]
    assert tuple(w.shape) == (n, *cell)
    m = {"a": 9, "b": 18, "c": 1} if b >= 1 else {"a": 36, "b": 72, "c": 4}
    for name, cells in m.items():
        att = getattr(net, name).attention
        assert (att.m, att.n) == (cells, n)
        hidden = max(getattr(net, name).in_channels // 16, 16)
        assert att.fc2.weight.shape == ((n + 1) * cells, hidden) and att.fc2.bias is not None
        assert att.fc1.bias is None and att.fc1.weight.shape == (hidden, getattr(net, name).in_channels)
    # depthwise warehouse: cells (128, 1), m = 9
    assert tuple(net.kw_warehouses.weights[1].shape) == (9, 128, 1)
    assert isinstance(net.stem, nn.Conv2d) and not isinstance(net.stem, KWConv2d)


def test_warehouse_parameters_counted_once():
    net = Toy({0: 1.0, 1: 1.0})
    ids = [id(p) for p in net.parameters()]
    assert len(ids) == len(set(ids))
    wh = sum(w.numel() for w in net.kw_warehouses.weights)
    att = sum(nparams(c.attention) for c in kw_convs(net))
    assert nparams(net) == wh + att + net.c.bias.numel() + net.stem.weight.numel()


def test_static_where_budget_is_none():
    net = Toy({0: None, 1: 2.0})
    assert isinstance(net.a, nn.Conv2d) and isinstance(net.dw, KWConv2d)
    assert len(net.kw_warehouses.weights) == 1


@pytest.mark.parametrize("b", [0.25, 0.5])
def test_fractional_budget_start(b):
    # One cell in every 1/b starts on a fresh warehouse cell, the rest on the zero cell.
    net = Toy({0: b, 1: 1.0})
    k = round(1 / b)
    used = []
    for conv in (net.a, net.b, net.c):
        cols = conv.attention.beta.argmax(1)
        n = conv.attention.n
        fresh = cols[cols < n]
        assert len(fresh) == conv.attention.m // k
        assert all(((cols[i * k : (i + 1) * k] < n).sum() == 1) for i in range(conv.attention.m // k))
        used += fresh.tolist()
    assert sorted(used) == list(range(net.kw_warehouses.weights[0].shape[0]))  # each cell used once


# -- behaviour --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("b", [1.0, 0.5, 4.0])
def test_tau_one_equals_static_one_hot_conv(b):
    torch.manual_seed(0)
    net = Toy({0: b, 1: b}).eval()
    set_kw_epoch(net, 0.0)
    x = torch.randn(2, 64, 9, 9)
    for conv in (net.a, net.c):
        ref = F.conv2d(x, one_hot_kernel(conv), conv.bias, conv.stride, conv.padding)
        torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)
    x = torch.randn(2, 128, 5, 5)
    torch.testing.assert_close(net.b(x), F.conv2d(x, one_hot_kernel(net.b), None, 1, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        net.dw(x), F.conv2d(x, one_hot_kernel(net.dw), None, 1, 1, groups=128), rtol=1e-5, atol=1e-5
    )


def test_batched_grouped_conv_equals_per_sample_loop():
    torch.manual_seed(0)
    net = Toy({0: 1.0, 1: 1.0}, nonlocal_basis=True).eval()
    set_kw_epoch(net, 7.0)  # tau = 0.65: the input-dependent part matters
    x = torch.randn(3, 3, 12, 12)
    loop = torch.cat([net(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(net(x), loop, rtol=1e-4, atol=1e-5)
    # and each sample really gets its own kernel
    att = net.b.attention(torch.randn(2, 128, 4, 4))
    assert not torch.allclose(att[: att.shape[0] // 2], att[att.shape[0] // 2 :])


# -- equal forms: the matmul form computes what the authors' grouped conv (the counted form) computes ----
def _outputs_and_grads(net, x):
    y = net(x)
    return [y.detach(), *torch.autograd.grad((y * y).sum(), [x, *net.parameters()])]


def _assert_same(fast, counted):
    # float64 rounding; gradients that are 0 in exact arithmetic get an absolute floor relative to the largest
    scale = max(float(c.abs().max()) for c in counted)
    for f, c in zip(fast, counted):
        torch.testing.assert_close(f, c, rtol=1e-9, atol=1e-11 * scale)


@pytest.mark.parametrize("form", ["matmul", "grouped", "auto"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("b, nonlocal_basis", [(1.0, False), (0.5, False), (4.0, False), (1.0, True)])
def test_forms_equal_counted_form(form, train, b, nonlocal_basis):
    torch.manual_seed(0)
    net = Toy({0: b, 1: b}, nonlocal_basis=nonlocal_basis).double().train(train)
    with torch.no_grad():
        for conv in kw_convs(net):
            for p in conv.attention.parameters():
                p.normal_(0, 0.3)  # away from the start, so every cell's attention matters
            conv.attention.norm.running_mean.normal_(0, 0.3)
    set_kw_epoch(net, 7.0)  # tau = 0.65: attention and start both matter
    for conv in kw_convs(net):
        conv.form = form
    x = torch.randn(
        3, 3, 9, 9, dtype=torch.float64, requires_grad=True
    )  # odd side: the strided 1x1 rounds up
    fast = _outputs_and_grads(net, x)
    with counted_forms():
        counted = _outputs_and_grads(net, x)
    assert len(fast) == 2 + len(list(net.parameters()))
    _assert_same(fast, counted)


@pytest.mark.parametrize("train", [True, False])
def test_matmul_form_equals_counted_form_in_resnet50(train):
    torch.manual_seed(0)
    net = build(catalog.get("kw_resnet50_1x").genome, num_classes=10, width_mult=0.125).double().train(train)
    set_kw_epoch(net, 5.0)
    for conv in kw_convs(net):
        conv.form = "matmul"
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64, requires_grad=True)
    fast = _outputs_and_grads(net, x)
    with counted_forms():
        counted = _outputs_and_grads(net, x)
    _assert_same(fast, counted)


def test_matmul_form_keeps_channels_last():
    torch.manual_seed(0)
    net = Toy({0: 1.0, 1: 1.0}).eval()
    set_kw_epoch(net, 7.0)
    x = torch.randn(2, 64, 9, 9).contiguous(memory_format=torch.channels_last)
    for conv in (net.a, net.c):  # 3x3 strided, 1x1 strided with bias
        conv.form = "matmul"
        y = conv(x)
        assert y.is_contiguous(memory_format=torch.channels_last)
        with counted_forms():
            torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-5)


def test_matmul_form_batch_of_one():
    torch.manual_seed(0)
    net = Toy({0: 1.0, 1: 1.0}).eval()
    set_kw_epoch(net, 7.0)
    x = torch.randn(1, 3, 8, 8)  # one sample: the assembled kernels are a view, not a copy
    for conv in kw_convs(net):
        conv.form = "matmul"
    with counted_forms():
        expected = net(x)
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


def test_form_choice():
    net = Toy({0: 1.0, 1: 1.0})
    x = torch.zeros(1, 64, 4, 4)
    assert net.c._form(x) == "matmul"  # CPU, ungrouped 1x1
    assert net.a._form(x) == "grouped"  # 3x3: unfolding costs more than it saves
    assert net.dw._form(x) == "grouped"  # grouped convs keep the grouped conv
    with counted_forms():
        assert net.c._form(x) == "grouped"  # the counters count the authors' form
    net.a.form = "matmul"
    assert net.a._form(x) == "matmul"


def test_attention_is_contrasting_not_softmax():
    torch.manual_seed(0)
    net = Toy({0: 1.0, 1: 1.0}).train()
    set_kw_epoch(net, 20.0)  # tau = 0
    a = net.b.attention(torch.randn(4, 128, 3, 3))
    assert (a < 0).any()  # negative weights allowed
    assert (a.abs().sum(1) < 1).all()  # |z| normalised over n + 1 entries, zero-cell column dropped


def test_gradients_reach_warehouse_and_attention():
    torch.manual_seed(0)
    net = Toy({0: 1.0, 1: 1.0}).train()
    set_kw_epoch(net, 10.0)
    net(torch.randn(2, 3, 8, 8)).square().mean().backward()
    for w in net.kw_warehouses.weights:
        assert w.grad is not None and w.grad.abs().sum() > 0
    for conv in kw_convs(net):
        for name in ("fc1", "fc2"):
            g = getattr(conv.attention, name).weight.grad
            assert g is not None and g.abs().sum() > 0, name


def test_set_kw_epoch_schedule():
    net = Toy({0: 1.0, 1: 1.0})
    assert set_kw_epoch(net, 0) == 1.0 and float(net.a.attention.tau) == 1.0
    assert set_kw_epoch(net, 5, temperature_epochs=20) == pytest.approx(0.75)
    assert float(net.dw.attention.tau) == pytest.approx(0.75)
    assert set_kw_epoch(net, 7.5, temperature_epochs=15) == pytest.approx(0.5)
    assert set_kw_epoch(net, 30) == 0.0
    assert "tau" in net.a.attention.state_dict()  # a trained checkpoint keeps its temperature


def test_kw_assembly_macs():
    net = Toy({0: 1.0, 1: 1.0})
    n0, n1 = (w.shape[0] for w in net.kw_warehouses.weights)
    expect = (128 * 64 * 9 + 128 * 128 * 9 + 128 * 64) * n0 + 128 * 9 * n1
    assert kw_assembly_macs(net) == expect


def test_finalize_rejects_sequential():
    mk = KernelWarehouseConvs({0: 1.0})
    seq = nn.Sequential(mk.conv(8, 8, 3, 1, 1, warehouse=0))
    with pytest.raises(TypeError):
        mk.finalize(seq)


# -- published sizes (catalog data) -------------------------------------------------------------------
KW_DESIGNS = [n for n in catalog.names() if n.startswith("kw_")]


@pytest.mark.parametrize("name", KW_DESIGNS)
def test_kw_published_params(name):
    d = catalog.get(name)
    torch.manual_seed(0)
    model = build(d.genome)
    assert d.counts["params"].matches(nparams(model)), (name, nparams(model), d.counts["params"])
    assert kw_convs(model)


def test_kw_resnet18_warehouse_shapes():
    # The authors' kw1x_resnet18 warehouses: (cells, c_out, c_in) per stage.
    model = build(catalog.get("kw_resnet18_1x").genome)
    assert [tuple(w.shape) for w in model.kw_warehouses.weights] == [
        (56, 64, 64),
        (47, 128, 128),
        (47, 256, 256),
        (27, 512, 512),
    ]


def test_kw_resnet18_quarter_gap_recorded():
    # The released 1/4x configuration builds 4,031,768 params; the README prints 4.08 M.
    d = catalog.get("kw_resnet18_1d4x")
    built = nparams(build(d.genome))
    assert d.counts["params"].exact and d.counts["params"].matches(built)
    assert round(built / 1e4) != round(
        d.results[0].params / 1e4
    )  # the gap to the printed 4.08 M stays visible


@pytest.mark.parametrize("name", ["mobilenetv3_large_cifar", "pfd_mobilenetv3_large_cifar"])
def test_bsconv_counts_mobilenetv3(name):
    d = catalog.get(name)
    model = build(d.genome).eval()
    x = torch.zeros(1, 3, d.target.resolution, d.target.resolution)
    assert d.target.convention == "bsconv"
    assert d.counts["params"].matches(nparams(model))
    assert d.counts["flops"].matches(hook_flops(model, x, "bsconv"))


def test_bsconv_counter_rules():
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=True),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.ReLU6(),
        nn.Hardswish(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )
    hw = 8 * 8
    expect = hw * 4 * 27 + 4 * hw + 2 * 4 * hw + 4 * hw + 4 * hw + 4 * 16 + 4 * 5 + 5
    assert hook_flops(m, torch.zeros(1, 3, 8, 8), "bsconv") == expect


# -- MobileNets ------------------------------------------------------------------------------------------
def _train_step(model, res, batch=2):
    model.train()
    set_kw_epoch(model, 3.0, temperature_epochs=15)
    out = model(torch.randn(batch, 3, res, res))
    out.logsumexp(1).mean().backward()
    assert out.shape == (batch, model.fc.out_features) and torch.isfinite(out).all()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


@pytest.mark.parametrize("kw", [None, 1.0, 4.0])
def test_mobilenetv2_forward_backward(kw):
    torch.manual_seed(0)
    g = Genome("mobilenetv2_0.5x", tuple(Stage(kw=kw) for _ in range(6)))
    _train_step(build(g, num_classes=10, width_mult=0.5), 32)


def test_mobilenetv2_padding_free_forward_backward():
    # Padding-free maps shrink to floor((H-3)/2)+1: four stride-2 steps after the stride-2 stem need 64 px.
    torch.manual_seed(0)
    g = Genome("mobilenetv2_1x", tuple(Stage(kw=1.0) for _ in range(6)), downsampling="padding_free")
    _train_step(build(g, num_classes=10, width_mult=0.5), 64)


@pytest.mark.parametrize("stem, ds", [("standard", "standard"), ("hybrid", "padding_free")])
def test_mobilenetv3_forward_backward(stem, ds):
    torch.manual_seed(0)
    model = build(
        Genome("mobilenetv3_large_cifar", stem=stem, downsampling=ds), num_classes=10, width_mult=0.5
    )
    _train_step(model, 32)
    with torch.no_grad():
        maps = model.features[:-1](torch.zeros(1, 3, 32, 32)).shape[-1]
    assert maps == (3 if ds == "padding_free" else 4)  # 32 -> 15 -> 7 -> 3 instead of 16 -> 8 -> 4


def test_mobilenet_v2_hand_over_and_sharing():
    # 1x: per stage one pointwise and one depthwise warehouse, plus the stem's; 4x splits expand/project.
    m1 = build(Genome("mobilenetv2_1x", tuple(Stage(kw=1.0) for _ in range(6))))
    assert m1.kw_warehouses.keys[0] == (0, "stem")
    expect = [(0, "stem")] + [(s, k) for s in range(6) for k in ("pw", "dw")]
    assert sorted(m1.kw_warehouses.keys, key=str) == sorted(expect, key=str)
    m4 = build(Genome("mobilenetv2_1x", tuple(Stage(kw=4.0) for _ in range(6))))
    assert len(m4.kw_warehouses.keys) == 1 + 6 * 3  # stage 0 holds the hand-over block's expansion conv
    # the first 24-channel block (expanding 16 -> 96, stride 2) lives in stage 0's warehouses
    block = m1.features[2]
    assert [c.warehouse for c in kw_convs(block)] == [(0, "pw"), (0, "dw"), (0, "pw")]
    assert not isinstance(m1.fc, KWConv2d)


def test_mobilenet_rejects_block_plugins_and_kw_on_v3():
    g = Genome("mobilenetv2_1x").with_stage(0, plugins=(make_plugin("se", "after_conv2", 16),))
    with pytest.raises(UserError, match="not supported"):
        build(g)
    with pytest.raises(UserError, match="KernelWarehouse"):
        build(Genome("mobilenetv3_large_cifar", tuple(Stage(kw=1.0) for _ in range(5))))


def test_mobilenet_static_published_sizes():
    # torchvision MobileNetV2 1.0 / 0.5 (KernelWarehouse's baselines print 3.50 M / 1.97 M).
    assert nparams(build(Genome("mobilenetv2_1x"))) == 3_504_872
    assert round(nparams(build(Genome("mobilenetv2_0.5x"))) / 1e4) == 197
    assert math.isclose(nparams(build(Genome("mobilenetv3_large_cifar"))), 3_066_512)


def test_deepcopy_and_state_dict_keep_one_warehouse():
    import copy

    torch.manual_seed(0)
    net = Toy({0: 1.0, 1: 1.0}).eval()
    twin = copy.deepcopy(net)
    assert twin.a._bank[0] is twin.kw_warehouses and twin.a._bank[0] is not net.kw_warehouses
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(twin(x), net(x))
    fresh = Toy({0: 1.0, 1: 1.0}).eval()
    fresh.load_state_dict(net.state_dict())
    torch.testing.assert_close(fresh(x), net(x))


def _slices(model):
    """(conv, its slice of warehouse rows, cell shape) in the order the convs took their slices."""
    start: dict = {}
    for conv in kw_convs(model):
        e = conv.warehouse_weight
        n = e.shape[0]
        b = model.kw_warehouses.budgets[conv.index]
        m = conv.attention.m
        # the cells a layer takes: b per own cell for b >= 1; for b < 1 the cells its one-hot start uses
        cells = m * int(b) if b >= 1 else int(conv.attention.beta[:, :n].sum())
        s = start.get(conv.index, 0)
        start[conv.index] = s + cells
        yield conv, e[s : s + cells], tuple(e.shape[1:])


@pytest.mark.parametrize("backbone,width", [("resnet18", 1.0), ("resnet50", 0.5)])
@pytest.mark.parametrize("b", [0.5, 1.0, 4.0])
def test_warehouse_init_is_kaiming_fan_out_per_slice(backbone, width, b):
    """Each layer's slice has the std of Kaiming normal (fan_out) over [cells * c_out, c_in, 1, 1].

    The sample std of N normal values has a relative standard error of about 1/sqrt(2N); six of
    them is the tolerance. The previous init (the static kernel's Kaiming scale) misses this by a
    factor sqrt(b) at ResNet-18 4x and 2 on ResNet-50 layers whose input is 4x the cell width.
    """
    torch.manual_seed(0)
    model = build(Genome(backbone, tuple(Stage(kw=b) for _ in range(4))), 10, width)
    checked = 0
    for conv, cells, cell in _slices(model):
        expected = math.sqrt(2.0 / (len(cells) * cell[0]))
        got = cells.detach().std().item()
        tol = 6 / math.sqrt(2 * cells.numel())
        assert abs(got / expected - 1) < tol, (conv, len(cells), cell, got, expected)
        checked += 1
    assert checked == len(kw_convs(model))
