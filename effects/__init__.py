"""What each choice does where: every run of a study or a benchmark table pooled through one additive
model, top1 = intercept + sum over parts of effect[level] + block + noise (a block: one seed on one
machine and code), where a stage's choice is split into its parts (module type per position, r,
fusion, stage module, KW budget) and the global choices are parts of their own, each against its
baseline (docs/effects.md). The package sits below studies and analysis: it reads runs handed to it (a table CSV, or rows a study
reader built), never storage. runs: the input; coding: factors and design matrix; fit: the fit and
its checks; costs: exact costs composed per stage; front: candidates, predictions, the model front;
verdicts: the published designs; result: the whole analysis and its JSON; text: the printed report;
dominance: the project's non-dominated sort; fidelity: one model across the rungs of a ladder.
"""

from .coding import Coding, factors_of, is_stage, stage_label, stage_parts
from .costs import StageCosts, trace_count
from .dominance import dominates, non_dominated_sort, pareto_mask, to_minimization
from .fidelity import RESAMPLES, Fidelity, across_fidelity, fidelity_lines
from .fit import CV_FOLDS, LEVEL, MIN_NOISE_DF, MIN_RESID_DF, Fit, choose_kind, fit
from .front import ENUMERATE_LIMIT, candidates, model_front, predictions
from .result import Effects, analyse, design_half_widths
from .runs import Runs, block, runs_frame, runs_from_table
from .text import effects_lines, model_lines, report_text, verdict_lines
from .verdicts import in_space, trials_needed, verdicts

__all__ = [
    "CV_FOLDS",
    "ENUMERATE_LIMIT",
    "LEVEL",
    "MIN_NOISE_DF",
    "MIN_RESID_DF",
    "Coding",
    "Effects",
    "Fidelity",
    "RESAMPLES",
    "Fit",
    "Runs",
    "StageCosts",
    "across_fidelity",
    "analyse",
    "block",
    "candidates",
    "choose_kind",
    "design_half_widths",
    "dominates",
    "effects_lines",
    "factors_of",
    "fidelity_lines",
    "fit",
    "in_space",
    "is_stage",
    "model_front",
    "model_lines",
    "non_dominated_sort",
    "pareto_mask",
    "predictions",
    "report_text",
    "runs_frame",
    "runs_from_table",
    "stage_label",
    "stage_parts",
    "to_minimization",
    "trace_count",
    "trials_needed",
    "verdict_lines",
    "verdicts",
]
