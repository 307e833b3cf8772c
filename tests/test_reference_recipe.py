"""[references] recipe: which recipe the published designs train with in a study ("common" or
"authors"), validated, applied to reference trials only, stored on every trial and printed beside the
verdicts (docs/effects.md)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from searchspace import Genome, Recipe, catalog, space
from searchspace.cli import cli_main
from searchspace.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# the smoke study with KernelWarehouse at b = 1 in its space: resnet18, se_resnet18 (authors' recipe
# = the common one) and kw_resnet18_1x (drop-path 0.1, start temperature 0) are inside it
SMOKE_KW = (REPO / "studies/configs/smoke.toml").read_text().replace(
    'kw = ["off"]', 'kw = ["off", 1]'
) + '\n[references]\nevaluate = true\nrecipe = "{recipe}"\n'
KW_LABEL = "authors: dropout=0.0, drop_path=0.1, kw_start_temperature=0.0"


def _smoke_kw(folder: Path, recipe: str = "common") -> Path:
    p = folder / "smokekw.toml"
    p.write_text(SMOKE_KW.replace("{recipe}", recipe))
    return p


def _journal(path: Path):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


# -- config ---------------------------------------------------------------------------------------
def test_config_recipe_default_values_and_one_line_errors(tmp_path):
    from studies import config

    assert config.load("smoke").references.recipe == "common"
    assert config.load(str(_smoke_kw(tmp_path, "authors"))).references.recipe == "authors"
    assert config.load("smoke", {"references.recipe": "authors"}).references.recipe == "authors"
    assert config.to_storable(config.load("smoke"))["references"]["recipe"] == "common"
    for bad in ("author", "", 1, True):
        with pytest.raises(UserError) as e:
            config.load("smoke", {"references.recipe": bad})
        assert str(e.value) == f'smoke.toml: references.recipe: expected "common" or "authors", got {bad!r}'


def _cli(argv, capsys):
    from studies.run import main

    with pytest.raises(SystemExit) as e:
        cli_main(lambda: main(argv))
    return e.value.code, capsys.readouterr().err


def test_cli_recipe_override_refused_values_and_table_backend(tmp_path, capsys):
    code, err = _cli(["smoke", "--out", str(tmp_path / "a"), "--recipe", "theirs"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--recipe: invalid choice: 'theirs'" in err
    # a benchmark table holds results under the common recipe: it cannot answer "authors"
    code, err = _cli(
        [
            "smoke_table",
            "--out",
            str(tmp_path / "b"),
            "--backend",
            "table",
            "--reference",
            "--recipe",
            "authors",
        ],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1
    assert 'references.recipe = "authors" needs --backend ray (or --no-reference)' in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# -- which trial gets which recipe ----------------------------------------------------------------
def test_trial_recipe_and_labels():
    from studies.search import recipe_label, trial_recipe

    dsnet = catalog.get("dsnet50_a").recipe
    assert trial_recipe("dsnet50_a", "authors") == dsnet
    assert trial_recipe("dsnet50_a", "common") == Recipe()
    assert trial_recipe(None, "authors") == Recipe()  # a searched genome: always the common recipe
    assert trial_recipe("se_resnet50", "authors") == Recipe()  # its authors start like torchvision
    assert recipe_label(dsnet) == "authors: zero_init_residual, zero_conv_bias"
    assert recipe_label(catalog.get("kw_resnet18_1x").recipe) == KW_LABEL
    assert recipe_label(Recipe()) == "common"


@pytest.mark.parametrize("choice", ["common", "authors"])
def test_searcher_stores_the_recipe_and_hands_it_to_the_trainer(tmp_path, choice):
    """The reference study's trials under each choice: the "recipe" attr on every trial, the
    authors' recipe in the Ray trial config of a design that has one, and the model the trainer
    builds from that config starts as the authors' code starts it (DSNet: last BN of every residual
    branch at 0)."""
    from studies import config
    from studies.search import GenomeSpace, SamplerSpec, StudySearch
    from trainers.train import build_model

    cfg = config.load("dsnet", {"references.recipe": choice})
    url = str(tmp_path / "study.journal")
    study = optuna.create_study(
        study_name="r", storage=_journal(tmp_path / "study.journal"), directions=["maximize", "minimize"]
    )
    for name in ("dsnet50_a", "resnet50"):
        study.enqueue_trial(
            space.to_params(catalog.get(name).genome, cfg.space), user_attrs={"reference": name}
        )
    search = StudySearch(
        GenomeSpace(cfg.space, reference_recipe=cfg.references.recipe),
        cfg.objectives,
        "r",
        url,
        SamplerSpec("random", 0),
        cfg.fidelity.epochs,
        {"seed": 0},
        log=lambda m: None,
    )
    configs = [search.suggest(t) for t in ("dsnet", "plain", "searched")]
    attrs = [
        t.user_attrs
        for t in optuna.load_study(study_name="r", storage=_journal(tmp_path / "study.journal")).trials
    ]
    want = "authors: zero_init_residual, zero_conv_bias" if choice == "authors" else "common"
    assert [a["recipe"] for a in attrs] == [want, "common", "common"]
    assert [a.get("reference") for a in attrs] == ["dsnet50_a", "resnet50", None]
    assert "recipe" not in configs[1] and "recipe" not in configs[2]

    recipe = Recipe.from_dict(configs[0].get("recipe"))  # as studies.trainable reads it
    assert recipe == (catalog.get("dsnet50_a").recipe if choice == "authors" else Recipe())
    model = build_model(Genome.from_json(configs[0]["genome"]), 10, 0.125, recipe)
    last_bns = [m.last_bn.weight for m in model.modules() if hasattr(m, "last_bn")]
    assert len(last_bns) == 16
    assert all(bool((w == (0 if choice == "authors" else 1)).all()) for w in last_bns)


def test_a_changed_choice_enqueues_the_designs_it_changes_again(tmp_path):
    """A design trained under another recipe than the one it gets now is enqueued again (analysis reads
    the latest evaluation); one whose recipe is the same either way, or that waits, is not."""
    from searchspace.catalog import inside as _designs_in_space
    from studies import config
    from studies.driver import _enqueue_known

    cfg = config.load(str(_smoke_kw(tmp_path)))
    designs = _designs_in_space(cfg.space)
    assert [d.name for d in designs] == ["resnet18", "se_resnet18", "kw_resnet18_1x"]
    study = optuna.create_study(directions=["maximize", "minimize"])
    for d in designs:  # finished under "common"; se_resnet18 from before the attr existed
        t = study.ask()
        t.set_user_attr("reference", d.name)
        t.set_user_attr("status", "ok")
        if d.name != "se_resnet18":
            t.set_user_attr("recipe", "common")
        study.tell(t, [0.5, 1e9])
    assert _enqueue_known(study, designs, cfg.space, "reference", lambda m: None, "common") == 0
    assert _enqueue_known(study, designs, cfg.space, "reference", lambda m: None, "authors") == 1
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["reference"] for t in waiting] == ["kw_resnet18_1x"]
    assert _enqueue_known(study, designs, cfg.space, "reference", lambda m: None, "authors") == 0


# -- end to end -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_study_trains_references_with_the_chosen_recipe_and_prints_it(tmp_path, capsys):
    """A real study on a local Ray: references under "authors", then resumed under --recipe common.
    Every trial carries the recipe it trained with; the summary table, the rediscovery table and the
    HTML report print it beside the verdicts."""
    import ray

    from analysis import load_study, rediscovery
    from studies.run import main

    cfg, out = _smoke_kw(tmp_path, "authors"), tmp_path / "run"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        base = [str(cfg), "--out", str(out), "--quiet", "--trials", "1", "--concurrency", "2"]
        assert main(base) == 0
        first = capsys.readouterr().out
        storage = _journal(out / "study.journal")
        refs = optuna.load_study(study_name="smokekw.references", storage=storage).trials
        got = {t.user_attrs["reference"]: (t.user_attrs["recipe"], t.user_attrs["status"]) for t in refs}
        assert got == {
            "resnet18": ("common", "ok"),
            "se_resnet18": ("common", "ok"),
            "kw_resnet18_1x": (KW_LABEL, "ok"),
        }
        searched = optuna.load_study(study_name="smokekw", storage=storage).trials
        assert [t.user_attrs["recipe"] for t in searched] == ["common"]
        assert '[references] recipe = "authors"' in first
        row = next(line for line in first.splitlines() if line.strip().startswith("kw_resnet18_1x"))
        assert KW_LABEL in row
        assert "nan" not in first  # designs outside the space show "-", not a missing value
        assert "[references] recipe is &quot;authors&quot;" in (out / "report.html").read_text()
        assert "<td>" + KW_LABEL + "</td>" in (out / "report.html").read_text()

        assert main([*base, "--resume", "--recipe", "common"]) == 0  # only kw_resnet18_1x trains again
    finally:
        ray.shutdown()
    refs = optuna.load_study(study_name="smokekw.references", storage=_journal(out / "study.journal")).trials
    assert sorted((t.user_attrs["reference"], t.user_attrs["recipe"]) for t in refs) == [
        ("kw_resnet18_1x", KW_LABEL),  # "authors: ..." sorts before "common"
        ("kw_resnet18_1x", "common"),
        ("resnet18", "common"),
        ("se_resnet18", "common"),
    ]
    red = rediscovery(load_study(out / "study.journal", "smokekw")).set_index("design")
    assert red.loc["kw_resnet18_1x", "recipe"] == "common"  # the latest evaluation
