"""Show the analysis figures inside optuna-dashboard (they are stored in the study itself)."""

from __future__ import annotations

import optuna

from effects import LEVEL, Effects
from searchspace.errors import UserError

from . import plots
from .effects import of_study
from .load import completed, load_study, open_storage, resolve_study_name
from .pareto import hypervolume_history
from .rediscovery import beside_single_runs, rediscovery


def push_to_dashboard(
    storage, study_name: str | None = None, designs=None, costs=None, effects: Effects | None = None
) -> list[str]:
    """Save the figures into the study with optuna_dashboard.save_plotly_graph_object: the model's
    answer (its front, its verdicts beside the single-run ones), the single runs (observed front,
    rediscovery at face value, hypervolume), the effects and, for runs of several
    rungs, the effects across fidelity; fixed ids, so pushing again replaces
    them. The answer also goes into the study's note (its Note page: the cards' order is
    optuna-dashboard's own), unless a person wrote that note. `storage`: run folder, .journal file, storage URL or
    an Optuna storage; `effects`: the study's effects model if already fitted. Returns the ids."""
    from optuna_dashboard import save_plotly_graph_object

    st = open_storage(storage)
    name = resolve_study_name(st, study_name, storage)
    df = load_study(st, name)
    red = rediscovery(df, designs)
    figs = {}
    try:
        fitted = effects if effects is not None else of_study(df, designs=designs, costs=costs)
    except UserError:
        fitted = None  # too few completed runs for the model: no model cards yet
    if fitted is not None:
        figs["model-front"] = plots.model_front_figure(fitted.front, fitted.designs, LEVEL)
        if len(fitted.designs):
            figs["model-verdicts"] = plots.rediscovery_figure(
                beside_single_runs(fitted, red, len(completed(df))),
                columns=plots.VERDICT_COLUMNS,
                title=f"Published designs: model verdicts ({LEVEL:.0%} intervals) beside the single-run ones",
                row_px=70,
            )
    # The dashboard draws each figure in a 450 px card: the proxy panel only (the published
    # ImageNet panel is in the HTML report), compact margins and legend.
    figs["pareto-front"] = plots.front_figure(df, designs=designs, published=False)
    figs["rediscovery"] = plots.rediscovery_figure(red)
    if len(completed(df)):  # hypervolume needs a reference point, i.e. a completed trial
        figs["hypervolume"] = plots.hypervolume_figure(hypervolume_history(df))
    if fitted is not None:
        figs["effects"] = plots.effects_heatmap(fitted.parts)
        if fitted.fidelity is not None:
            figs["fidelity"] = plots.fidelity_figure(fitted.fidelity)

    study = optuna.load_study(study_name=name, storage=st)
    if fitted is not None:
        write_answer_note(study, fitted, red, len(completed(df)))
    for gid, fig in figs.items():
        fig.update_layout(
            height=440,  # a table scrolls inside its card
            margin=dict(l=50, r=10, t=60, b=40),
            legend=dict(orientation="h", y=-0.25, yanchor="top", font=dict(size=9)),
        )
        save_plotly_graph_object(study, fig, graph_object_id=gid)
    return list(figs)


NOTE_HEAD = "## The answer: the effects model (written by analysis.dashboard on each push)"
NOTE_ROWS = 10  # model-front rows in the note; the report has them all


def answer_note(e: Effects, red, single: int) -> str:
    """The model's front and verdicts as the study's Markdown note (optuna-dashboard orders the
    figure cards itself, so the note is where the answer comes first)."""
    top = e.front.sort_values("predicted", ascending=False).head(NOTE_ROWS)
    lines = [
        NOTE_HEAD,
        "",
        f"Every run pooled ({e.fit.n} runs), each prediction with its {LEVEL:.0%} interval. The cards that "
        "say *single runs* show the runs one by one: their best points are the luckiest of many noisy "
        "runs (winner's curse).",
        "",
        f"**Model front** over {e.coverage} ({len(e.front)} genomes; the {len(top)} predicted highest):",
        "",
        "| genome | predicted top-1 | FLOPs | trained |",
        "|---|---|---|---|",
        *(
            f"| {_md(r.genome.summary())} | {r.predicted:.3f} [{r.low:.3f}, {r.high:.3f}] | "
            f"{r.flops / 1e9:.3f} G | {'yes' if r.evaluated else 'no'} |"
            for r in top.itertuples()
        ),
    ]
    if len(e.designs):
        lines += [
            "",
            "**Published designs**: the model's verdict beside the single-run one, and which to believe:",
            "",
            "| design | predicted top-1 | model verdict | single run | believe |",
            "|---|---|---|---|---|",
            *(
                f"| {r['design']} | {_interval(r)} | {_md(r['verdict'])} | {r['single_run']} | {_md(r['believe'])} |"
                for r in beside_single_runs(e, red, single).to_dict("records")
            ),
        ]
    return "\n".join(lines)


def _md(text: str) -> str:  # a table cell: the dashboard's Markdown splits cells at every bar, escaped or not
    return str(text).replace(" | ", " · ").replace("|", "/")


def _interval(r: dict) -> str:
    p = r.get("predicted")
    return "-" if p is None or p != p else f"{p:.3f} [{r['low']:.3f}, {r['high']:.3f}]"


def write_answer_note(study: optuna.Study, e: Effects, red, single: int) -> bool:
    """Write the answer as the study's note unless a person wrote one there (never overwritten)."""
    from optuna_dashboard import get_note, save_note

    old = get_note(study)
    if old and not old.startswith(NOTE_HEAD):
        return False
    save_note(study, answer_note(e, red, single))
    return True


__all__ = ["push_to_dashboard", "answer_note"]
