"""Everything that reads a study: table, Pareto fronts, hypervolume, rediscovery, plots, report.

Reads Optuna storage only; imports searchspace (genome, catalog), never trainers, studies or Ray.
"""

from .load import (
    completed,
    flatten_genome,
    genome_columns,
    genome_summary,
    load_study,
    newest_run_dir,
    open_storage,
)
from .pareto import (
    add_ranks,
    dominates,
    hypervolume,
    hypervolume_history,
    non_dominated_sort,
    pareto_front,
    pareto_mask,
    reference_point,
)
from .plots import (
    effects_heatmap,
    front3d_figure,
    front_figure,
    hypervolume_figure,
    parallel_figure,
    rediscovery_figure,
    stage_map_figure,
)
from .rediscovery import genome_distance, in_space, rediscovery

_LAZY = {"build_report": "report", "write_report": "report", "push_to_dashboard": "dashboard"}


def __getattr__(name):
    # Imported on use, so `python -m analysis.report` does not find its module already imported.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


__all__ = [
    "load_study",
    "open_storage",
    "completed",
    "flatten_genome",
    "genome_columns",
    "genome_summary",
    "newest_run_dir",
    "non_dominated_sort",
    "pareto_mask",
    "dominates",
    "hypervolume",
    "reference_point",
    "add_ranks",
    "pareto_front",
    "hypervolume_history",
    "rediscovery",
    "genome_distance",
    "in_space",
    "effects_heatmap",
    "front_figure",
    "hypervolume_figure",
    "parallel_figure",
    "stage_map_figure",
    "front3d_figure",
    "rediscovery_figure",
    "build_report",
    "write_report",
    "push_to_dashboard",
]
