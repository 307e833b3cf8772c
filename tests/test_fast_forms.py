"""The fast forms of the plugins compute what their counted (authors') forms compute.

Same module, same weights, float64: outputs and every gradient agree, in training (BatchNorm on
batch statistics) and evaluation, on maps whose side the fast form handles and on maps it leaves to
the counted form. The counters and fvcore always see the counted form.
"""

import pytest
import torch

from searchspace import build, catalog
from searchspace.counters import hook_flops
from searchspace.plugins import Site, get
from searchspace.plugins.forms import counted_forms, counting
from searchspace.plugins.sda import SDA

CASES = [
    ("se", {}, 1),
    ("msa", {}, 1),
    ("msa", dict(branches=5), 1),
    ("msaf", {}, 2),
    ("msaf", dict(branches=5), 2),
    ("aff", {}, 2),
    ("iaff", {}, 2),
    ("iaff", dict(variant="mxnet"), 2),
    ("dsm", dict(bias=True), 1),
    ("dsm", dict(bias=False), 1),
    ("dam", dict(bias=True), 1),
    ("dam", {}, 1),
    ("sda", {}, 3),
]


def _outputs_and_grads(module, inputs):
    y = module(inputs) if isinstance(module, SDA) else module(*inputs)  # a stage module takes the list
    return [y.detach(), *torch.autograd.grad((y * y).sum(), [*inputs, *module.parameters()])]


@pytest.mark.parametrize("name,opts,arity", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("side", [2, 4, 6, 8, 16, 24, 56])
@pytest.mark.parametrize("train", [True, False])
def test_fast_form_equals_counted_form(name, opts, arity, side, train):
    torch.manual_seed(0)
    module = get(name).factory(16, 4, Site(0, 0, "after_add", 8, num_blocks=3), **opts).double().train(train)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)  # away from the identity-like start, so every path matters
    inputs = [torch.randn(2, 16, side, side, dtype=torch.float64, requires_grad=True) for _ in range(arity)]
    fast = _outputs_and_grads(module, inputs)
    with counted_forms():
        counted = _outputs_and_grads(module, inputs)
    # float64 rounding. Some gradients are exactly 0 in exact arithmetic (a conv bias before a
    # training-mode BN, a softmax's shift), so the absolute floor is relative to the largest one.
    scale = max(float(c.abs().max()) for c in counted)
    for f, c in zip(fast, counted):
        torch.testing.assert_close(f, c, rtol=1e-9, atol=1e-10 * scale)


def test_network_fast_equals_counted():
    torch.manual_seed(0)
    model = build(catalog.get("dsnet50_b").genome, 10, 0.25).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        fast = model(x)
        with counted_forms():
            counted = model(x)
    torch.testing.assert_close(fast, counted, rtol=1e-10, atol=1e-10)


def test_counters_see_the_counted_form():
    assert not counting()
    with counted_forms():
        assert counting()
    assert not counting()
    seen = []
    torch.jit.trace(lambda x: (seen.append(counting()), x * 2)[1], torch.ones(1), check_trace=False)
    assert seen == [True]  # fvcore counts from a JIT trace
    model = build(catalog.get("msaf_resnet18_r4").genome, 10).eval()
    x = torch.randn(1, 3, 64, 64)
    with counted_forms():
        expected = hook_flops(model, x)
    assert hook_flops(model, x) == expected  # the hook counter switches to the counted form itself
