"""analysis.metrics, the one table of metrics: an objective added to the table alone is accepted by
a config, reported by the trial, stored, formatted in the run's lines and shown in the report and plots."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from analysis import metrics
from searchspace.errors import UserError

REPO = Path(__file__).resolve().parent.parent
# A metric the trainer computes (TrainResult.val_loss) but nothing reports today: the table entry is
# all it takes to make it an objective.
VAL_LOSS = metrics.Metric("val_loss", "minimize", "validation loss on the proxy", "train")


@pytest.fixture
def val_loss():
    metrics.register(VAL_LOSS)
    try:
        yield VAL_LOSS
    finally:
        metrics.unregister(VAL_LOSS.name)


def _doc(**objectives) -> dict:
    import tomllib

    doc = tomllib.loads((REPO / "studies/configs/smoke.toml").read_text())
    doc["objectives"] = objectives
    return doc


def test_table_keeps_the_stored_names_and_formats():
    assert list(metrics.OBJECTIVES) == ["top1", "flops", "params", "activations", "latency_ms"]
    assert dict(metrics.OBJECTIVES)["top1"] == "maximize" and metrics.OBJECTIVES["flops"] == "minimize"
    assert "top5" not in metrics.OBJECTIVES and metrics.get("top5").direction == "maximize"
    assert metrics.names("cost") == ["flops", "params", "activations"]
    assert [m for m in metrics.names() if metrics.get(m).every_epoch] == [
        "top1",
        "flops",
        "params",
        "activations",
        "top5",
        "loss",
    ]
    assert (metrics.fmt("flops", 4.1e9), metrics.fmt("params", 25_557_032), metrics.fmt("top1", 0.77125)) == (
        "4.10G",
        "25.56M",
        "0.7712",
    )
    assert metrics.fmt("activations", 2_490_000) == "2.49M"  # was "0.00G" in the run's lines
    assert (metrics.fmt("latency_ms", 3.0), metrics.fmt("epochs", 2), metrics.fmt("top1", None)) == (
        "3",
        "2",
        "-",
    )
    assert metrics.label("flops") == "FLOPs of the target (G)" and metrics.scale("flops") == 1e9
    assert metrics.label("not_a_metric") == "not_a_metric" and metrics.direction("top3") == "maximize"
    with pytest.raises(ValueError, match="already registered"):
        metrics.register(metrics.Metric("top1", "maximize", "x", "epoch"))
    with pytest.raises(ValueError, match="direction"):
        metrics.Metric("x", "up", "x", "epoch")
    with pytest.raises(ValueError, match="source"):
        metrics.Metric("x", "minimize", "x", "somewhere")


def test_registered_objective_is_validated_stored_loaded_formatted_and_plotted(tmp_path, val_loss):
    """Without Ray: the config, the trial's report plan, the searcher's storage, the loaded table, the
    run's line, the front figure and the report all take the new objective from the table entry."""
    import analysis
    from analysis.plots import front_figure
    from studies import config, ray_backend
    from studies.search import GenomeSpace, SamplerSpec, StudySearch
    from studies.session import record_config

    cfg = config.from_dict(_doc(top1="maximize", val_loss="minimize"), "vl")
    assert cfg.objectives == [
        {"name": "top1", "direction": "maximize"},
        {"name": "val_loss", "direction": "minimize"},
    ]
    plan = ray_backend.trial_metrics()  # what the Ray worker is told to report
    assert plan["placeholders"]["val_loss"] == 0.0 and "val_loss" in plan["trained"]
    assert "val_loss" not in plan["epoch"]  # known after training only: not a rung metric for ASHA
    asha = ray_backend.scheduler(
        config.from_dict(
            {
                **_doc(top1="maximize", val_loss="minimize", flops="minimize"),
                "early_stopping": {"asha": True},
            },
            "vl",
        )
    )
    # ranks at a rung by what is known there
    assert asha.rule.metrics == ["top1", "flops"] and asha.rule.signs == [-1.0, 1.0]

    url = str(tmp_path / "study.journal")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    study = optuna.create_study(study_name="vl", storage=storage, directions=["maximize", "minimize"])
    record_config(study, cfg)
    lines = []
    s = StudySearch(
        GenomeSpace(cfg.space),
        cfg.objectives,
        "vl",
        url,
        SamplerSpec("random", 0),
        epochs=1,
        attrs={"fidelity": cfg.protocol["fidelity"], "seed": 0, "reference": None},
        log=lines.append,
    )
    for i, (top1, vl) in enumerate([(0.75, 0.61), (0.5, 0.42), (0.625, 0.9)]):
        s.suggest(str(i))
        s.on_trial_complete(
            str(i),
            {
                "final": True,
                "status": "ok",
                "epochs_completed": 1,
                "top1": top1,
                "flops": 1.8e9,
                "val_loss": vl,
                "genome_key": f"g{i}",
            },
        )
    trials = optuna.load_study(study_name="vl", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert [t.values for t in trials] == [[0.75, 0.61], [0.5, 0.42], [0.625, 0.9]]
    assert [t.user_attrs["val_loss"] for t in trials] == [0.61, 0.42, 0.9]  # stored as a user attr too
    assert "top1=0.75, val_loss=0.61 " in lines[0]

    df = analysis.load_study(url, "vl")
    assert df["val_loss"].tolist() == [0.61, 0.42, 0.9]
    fig = front_figure(df, designs=[])
    assert fig.layout.xaxis.title.text == "validation loss on the proxy"  # the only cost-like objective
    assert "top1 vs val_loss" in fig.layout.annotations[0].text
    html = analysis.build_report(df, designs=[])
    assert "val_loss (minimize)" in html and "validation loss on the proxy" in html


def test_unregistered_objective_is_a_user_error():
    from studies import config

    with pytest.raises(
        UserError,
        match=r"objective 'val_loss' unknown \(known: top1, flops, params, "
        r"activations, latency_ms\)",
    ):
        config.from_dict(_doc(top1="maximize", val_loss="minimize"), "vl")


@pytest.mark.slow
def test_registered_objective_in_a_real_smoke_study(tmp_path, val_loss, capsys):
    """The real smoke study on a local Ray: the workers learn the new objective from the driver (they
    never saw the registration), report it from the trainer's result, and the run prints and stores it."""
    import ray

    from studies.run import main

    cfg = tmp_path / "vl.toml"
    text = (REPO / "studies/configs/smoke.toml").read_text()
    cfg.write_text(
        text.replace('flops = "minimize"', 'val_loss = "minimize"').replace("trials = 4", "trials = 2")
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    os.environ.pop("STUDIES_INJECT_FAILURE_TRIAL", None)
    try:
        assert main([str(cfg), "--out", str(tmp_path / "run"), "--concurrency", "2"]) == 0
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "run/study.journal"))
    )
    study = optuna.load_study(study_name="vl", storage=storage)
    assert study.metric_names == ["top1", "val_loss"]
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2, [(t.state, t.user_attrs.get("error")) for t in study.trials]
    for t in done:
        assert t.values == [t.user_attrs["top1"], t.user_attrs["val_loss"]] and t.user_attrs["val_loss"] > 0
        assert f"val_loss={metrics.fmt('val_loss', t.values[1])}" in out
    assert "validation loss on the proxy" in (tmp_path / "run/report.html").read_text()
