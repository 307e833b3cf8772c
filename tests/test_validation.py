"""User mistakes in genome JSON and [space] tables surface as one-line UserErrors, never tracebacks."""

import json
import subprocess
import sys

import pytest

from searchspace import Genome, Stage, UserError, build, make_plugin, space
from searchspace.backbones.specs import BACKBONE_SPECS


def _stage0(stage: dict, backbone: str = "resnet50") -> str:
    n = BACKBONE_SPECS[backbone].num_stages
    return json.dumps({"backbone": backbone, "stages": [stage] + [{}] * (n - 1)})


def _se(**fields) -> dict:
    return {"type": "se", "position": "after_add", **fields}


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"kw_options": "x"}', "kw_options: expected"),
        (
            '{"kw_options": {"nonlocal_basis": 1}}',
            "kw_options.nonlocal_basis: 1 not allowed (allowed: False, True)",
        ),
        ('{"kw_options": {"colour": true}}', "kw_options.colour: unknown option"),
        ('{"backbone": ["resnet50"]}', "backbone: expected a backbone name (a string), got ['resnet50']"),
        ('{"stem": 3}', "stem: expected a stem name (a string), got 3"),
        ('{"downsampling": ["v1"]}', "downsampling: expected a downsampling style (a string), got ['v1']"),
        ('{"stages": {}}', "stages: expected a list"),
        ('{"stages": ["x", {}, {}, {}]}', "stages[0]: expected an object, got 'x'"),
        (
            _stage0({"plugins": [{"type": ["se"], "position": "after_add"}]}),
            "stages[0].plugins[0].type: expected a plugin name (a string), got ['se']",
        ),
        (
            _stage0({"plugins": [{"type": "se", "position": ["after_add"]}]}),
            "stages[0].plugins[0].position: expected a position (a string), got ['after_add']",
        ),
        (
            _stage0({"plugins": [{"type": "dsm", "position": "after_add", "options": ["ab"]}]}),
            "stages[0].plugins[0].options: expected option values (an object), got ['ab']",
        ),
        (
            _stage0({"plugins": [{"type": "dsm", "position": "after_add", "options": {"bias": 1}}]}),
            "stages[0].plugins[0].options.bias: 1 not allowed",
        ),
        (_stage0({"plugins": [_se(r=True)]}), "stages[0].plugins[0].r: True must be an integer >= 1"),
        (_stage0({"plugins": [_se(r="16")]}), "stages[0].plugins[0].r: '16' must be an integer >= 1"),
        (_stage0({"plugins": "se"}), "stages[0].plugins: expected a list of plugin objects, got 'se'"),
        (_stage0({"plugins": _se()}), "stages[0].plugins: expected a list of plugin objects"),
        (_stage0({"fusion": "aff"}), "stages[0].fusion: expected an object"),
        (_stage0({"stage_module": 1}), "stages[0].stage_module: expected an object"),
        (_stage0({"kw": True}), "stages[0].kw: expected a number or null, got True"),
        (_stage0({"kw": "1"}), "stages[0].kw: expected a number or null, got '1'"),
        (_stage0({"kw": [1]}), "stages[0].kw: expected a number or null, got [1]"),
        # MobileNets: refused at validation, not at build time in a worker
        (
            _stage0({"plugins": [_se()]}, "mobilenetv2_1x"),
            "stages[0].plugins: block, fusion and stage plugins are not supported on mobilenetv2_1x",
        ),
        (
            _stage0({"fusion": {"type": "aff"}}, "mobilenetv2_0.5x"),
            "stages[0].fusion: block, fusion and stage plugins are not supported",
        ),
        (
            _stage0({"stage_module": {"type": "sda"}}, "mobilenetv3_large_cifar"),
            "stages[0].stage_module: block, fusion and stage",
        ),
        (
            _stage0({"kw": 1}, "mobilenetv3_large_cifar"),
            "stages[0].kw: 1.0 not allowed: KernelWarehouse is not supported on mobilenetv3_large_cifar",
        ),
    ],
)
def test_bad_genome_json_is_a_user_error(text, message):
    with pytest.raises(UserError) as e:
        Genome.from_json(text)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_kw_int_and_float_are_one_network():
    a, b = Genome.from_json(_stage0({"kw": 1})), Genome.from_json(_stage0({"kw": 1.0}))
    assert a == b and a.key == b.key and a.to_json() == b.to_json()
    assert Genome("resnet50", (Stage(kw=2),) * 4).key == Genome("resnet50", (Stage(kw=2.0),) * 4).key
    # an option value in another numeric spelling is canonicalised too
    m4, m4f = (
        {"plugins": [{"type": "msa", "position": "after_add", "options": {"branches": v}}]} for v in (4, 4.0)
    )
    assert Genome.from_json(_stage0(m4)).key == Genome.from_json(_stage0(m4f)).key


def test_bool_kw_is_refused_even_when_built_in_python():
    with pytest.raises(UserError, match="not a KernelWarehouse budget"):
        Genome("resnet50", (Stage(kw=True),) * 4).validate()


def test_mobilenet_with_a_plugin_is_refused_at_validation():
    g = Genome("mobilenetv2_1x").with_stage(0, plugins=(make_plugin("se", "after_conv2", 16),))
    with pytest.raises(UserError, match="not supported on mobilenetv2_1x"):
        g.validate()
    with pytest.raises(UserError, match="KernelWarehouse is not supported"):
        Genome("mobilenetv3_large_cifar", tuple(Stage(kw=1.0) for _ in range(5))).validate()
    with pytest.raises(UserError, match="not supported"):  # build validates first
        build(g)


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"kw": 1}, "space.kw: expected a list of budgets, got 1"),
        ({"kw": ["x"]}, "space.kw: 'x' is not allowed"),
        ({"kw": [True]}, "space.kw: True is not allowed"),
        ({"kw": []}, "space.kw: must not be empty"),
        ({"plugin_options": {"dsm": 1}}, "space.plugin_options.dsm: expected a table"),
        ({"plugin_options": 3}, "space.plugin_options: expected a table"),
        ({"plugin_options": {"dsm": {"bias": True}}}, "space.plugin_options.dsm.bias: expected a list"),
        ({"plugin_options": {"dsm": {"bias": [1]}}}, "space.plugin_options.dsm.bias: 1 is not allowed"),
        ({"plugin_options": {"dsm": {"colour": [1]}}}, "space.plugin_options.dsm.colour: unknown option"),
        ({"plugin_options": {"nope": {"bias": [True]}}}, "space.plugin_options.nope: unknown plugin 'nope'"),
        ({"plugins": "se"}, "space.plugins: expected a list of names, got 'se' (write [\"se\"])"),
        ({"plugins": ["se", 3]}, "space.plugins: expected a list of names, got 3"),
        ({"plugins": []}, "space.plugins: must not be empty"),
        ({"stems": "deep"}, "space.stems: expected a list"),
        ({"r": 16}, "space.r: expected a list"),
        ({"r": [True]}, "space.r"),
        ({"kw_per_stage": 1}, "space.kw_per_stage: expected true or false, got 1"),
        ({"backbone": ["resnet50"]}, "space.backbone: expected a backbone name"),
        (
            {"backbone": "mobilenetv2_1x", "plugins": ["none", "se"]},
            "space.plugins: 'se' is not allowed (allowed: none;",
        ),
        ({"backbone": "mobilenetv2_1x", "fusions": ["none", "aff"]}, "space.fusions: 'aff' is not allowed"),
        (
            {"backbone": "mobilenetv2_1x", "stage_modules": ["sda"]},
            "space.stage_modules: 'sda' is not allowed",
        ),
        (
            {"backbone": "mobilenetv3_large_cifar", "kw": ["off", 1]},
            "space.kw: 1.0 is not allowed (allowed: off; KernelWarehouse is not supported on mobilenetv3_large_cifar",
        ),
    ],
)
def test_bad_space_is_a_user_error(bad, message):
    with pytest.raises(UserError) as e:
        space.SpaceSpec.from_dict(bad)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_good_mobilenet_spaces_pass():
    spec = space.SpaceSpec.from_dict(
        {"backbone": "mobilenetv2_1x", "kw": ["off", 1, 4], "downsampling": ["standard", "padding_free"]}
    )
    assert spec.kw == ("off", 1.0, 4.0) and space.count(spec) == 6
    spec = space.SpaceSpec.from_dict(
        {"backbone": "mobilenetv3_large_cifar", "stems": ["standard", "hybrid"]}
    ).validate()
    assert spec.stems == ("standard", "hybrid") and space.count(spec) == 2


_NO_OPTUNA = r"""
import sys
sys.modules["optuna"] = None  # any `import optuna` now fails
from searchspace import catalog, space
spec = space.SpaceSpec.from_dict({"backbone": "resnet50", "plugins": ["none", "se"], "r": [16],
                                  "positions": ["after_conv3"], "kw": ["off", 1]})
inside = [d.name for d in catalog.designs() if space.contains(spec, d.genome)]
assert "resnet50" in inside and "se_resnet50" in inside, inside
assert not space.contains(spec, catalog.get("resnet18").genome)
params = space.to_params(catalog.get("se_resnet50").genome, spec)
assert params and all(v in ("se", "none", "after_conv3", 16, "off", 1.0) for v in params.values()), params
print("ok", len(inside))
"""


def test_contains_needs_no_optuna():
    r = subprocess.run([sys.executable, "-c", _NO_OPTUNA], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-2000:]


def test_fixed_answers_refuse_a_value_outside_the_choices():
    trial = space._FixedAnswers({"kw": 3.0})
    with pytest.raises(UserError, match="'kw': 3.0 is not allowed"):
        trial.suggest_categorical("kw", ["off", 1.0])
    with pytest.raises(UserError, match="no value"):
        trial.suggest_categorical("stem", ["standard", "deep"])
    assert space._FixedAnswers({"kw": 1}).suggest_categorical("kw", ["off", 1.0]) == 1.0
    with pytest.raises(UserError):  # True is not the budget 1.0
        space._FixedAnswers({"kw": True}).suggest_categorical("kw", ["off", 1.0])


def test_suggest_still_takes_optuna_trials():
    optuna = pytest.importorskip("optuna")
    spec = space.SpaceSpec.from_dict({"backbone": "resnet18", "plugins": ["none", "se"], "r": [4, 16]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        g = space.suggest(study.ask(), spec)
        assert space.contains(spec, g)
        assert space.suggest(optuna.trial.FixedTrial(space.to_params(g, spec)), spec) == g
