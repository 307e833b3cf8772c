"""Show the analysis figures inside optuna-dashboard (they are stored in the study itself)."""

from __future__ import annotations

import optuna

from effects import Effects
from searchspace.errors import UserError

from . import plots
from .effects import of_study
from .load import completed, load_study, open_storage, resolve_study_name
from .pareto import hypervolume_history
from .rediscovery import rediscovery


def push_to_dashboard(
    storage, study_name: str | None = None, designs=None, costs=None, effects: Effects | None = None
) -> list[str]:
    """Save the front, rediscovery, hypervolume and effects figures into the study with
    optuna_dashboard.save_plotly_graph_object; fixed ids, so pushing again replaces them.
    `storage`: run folder, .journal file, storage URL or an Optuna storage; `effects`: the study's
    effects model if already fitted. Returns the ids."""
    from optuna_dashboard import save_plotly_graph_object

    st = open_storage(storage)
    name = resolve_study_name(st, study_name, storage)
    df = load_study(st, name)
    # The dashboard draws each figure in a 450 px card: the proxy panel only (the published
    # ImageNet panel is in the HTML report), compact margins and legend.
    figs = {
        "pareto-front": plots.front_figure(df, designs=designs, published=False),
        "rediscovery": plots.rediscovery_figure(rediscovery(df, designs)),
    }
    if len(completed(df)):  # hypervolume needs a reference point, i.e. a completed trial
        figs["hypervolume"] = plots.hypervolume_figure(hypervolume_history(df))
    try:
        fitted = effects if effects is not None else of_study(df, designs=designs, costs=costs)
        figs["effects"] = plots.effects_heatmap(fitted.parts)
    except UserError:
        pass  # too few completed runs for the model: no card yet

    study = optuna.load_study(study_name=name, storage=st)
    for gid, fig in figs.items():
        fig.update_layout(
            height=440,
            margin=dict(l=50, r=10, t=60, b=40),
            legend=dict(orientation="h", y=-0.25, yanchor="top", font=dict(size=9)),
        )
        save_plotly_graph_object(study, fig, graph_object_id=gid)
    return list(figs)


__all__ = ["push_to_dashboard"]
