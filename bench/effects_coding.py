"""A stage's whole choice as one level, or as its parts: both codings of the effects model on one
study, with and without its [prior] table (docs/effects.md).

For each (coding, prior) the bench fits the model (effects.fit, kind auto) and prints:
- the fit (kind, runs, parameters) and its cross-validated error (the fit's `cv` check: folds by
  genome; a held-out run with a level or part its fold never saw is skipped, and counted);
- the median 95 % half-width of the whole-stage effects (every stage choice seen, against 'none':
  the same quantities in both codings), and of the part effects (the parts coding only);
- the median half-width of the predictions of the published designs in the study's space, and how
  many of those designs and of the evaluated genomes the model can predict at all;
- each of the study's own genomes left out in turn (the prior's runs stay): how many the model of
  the rest can predict, and the RMSE of those predictions against the genome's mean run.

    python bench/effects_coding.py RUN_DIR [--study NAME]
    python bench/effects_coding.py --table CSV     # a table's runs as the study's own (--quick: the smoke table)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from analysis.effects import runs_from_study  # noqa: E402
from analysis.load import load_study  # noqa: E402
from effects import factors_of, fit, in_space, runs_from_table  # noqa: E402
from searchspace import catalog  # noqa: E402
from searchspace.errors import UserError  # noqa: E402


def _median_half_width(frame) -> float:
    return float(np.median((frame["high"] - frame["low"]) / 2)) if len(frame) else float("nan")


def row(runs, whole_stages: bool) -> dict:
    f = fit(runs, whole_stages=whole_stages)
    cv = f.checks.get("cv") or {}
    stages = f.effects()
    stages = stages[stages["factor"].str.match(r"s\d+$")]
    backbones = {g.backbone for g in runs.frame["genome"]}
    designs = [
        d
        for d in catalog.designs()
        if d.genome.backbone in backbones and in_space(d, runs.config, runs.target)[0]
    ]
    widths = [(hi - lo) / 2 for d in designs if (p := f.predict(factors_of(d.genome))) for _, lo, hi in [p]]
    genomes = runs.frame.drop_duplicates("key")["genome"]
    own = runs.frame[runs.frame["kind"] != "table"]
    errors = []
    for key, g in own.drop_duplicates("key")[["key", "genome"]].itertuples(index=False):
        rest = fit(replace(runs, frame=runs.frame[runs.frame["key"] != key]), whole_stages=whole_stages)
        if (p := rest.predict(factors_of(g))) is not None:
            errors.append(own[own["key"] == key]["y"].mean() - p[0])
    return {
        "fit": f"{f.kind}, {f.n} runs, {len(f.coding.columns)} parameters",
        "cv": cv.get("rmse"),
        "cv_rows": f"{cv.get('rows', 0)} scored, {cv.get('skipped', 0)} skipped",
        "stage_hw": _median_half_width(stages),
        "stage_n": len(stages),
        "part_hw": None if whole_stages else _median_half_width(f.part_effects()),
        "design_hw": float(np.median(widths)) if widths else float("nan"),
        "designs": f"{len(widths)}/{len(designs)}",
        "predictable": sum(not f.coding.unknown(factors_of(g)) for g in genomes),
        "evaluated": len(genomes),
        "own_cv": f"{len(errors)}/{own['key'].nunique()} predicted, rmse "
        + (f"{float(np.sqrt(np.mean(np.square(errors)))):.4f}" if errors else "-"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--study")
    p.add_argument("--table", help="a benchmark table CSV whose runs stand for a study's own (no prior)")
    p.add_argument("--quick", action="store_true", help="--table studies/tables/smoke_table.csv (the test)")
    a = p.parse_args(argv)
    if a.quick:
        a.table = str(Path(__file__).resolve().parents[1] / "studies/tables/smoke_table.csv")
    try:
        if a.table:
            own = runs_from_table(a.table)
            own = replace(own, frame=own.frame.assign(kind="search"))
            cases = [("own runs", own)]
        elif a.run_dir:
            df = load_study(a.run_dir, a.study)
            own = runs_from_study(df)
            cases = [("own runs", own)]
            if df.attrs.get("prior_table"):
                cases.append(("with prior", own.with_prior(runs_from_table(df.attrs["prior_table"]))))
        else:
            raise UserError("give a RUN_DIR, --table CSV or --quick")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, runs in cases:
        for whole in (True, False):
            coding = "whole stages" if whole else "parts"
            try:
                r = row(runs, whole)
            except UserError as err:
                print(f"{name:10s} {coding:12s} not fitted: {err}")
                continue
            part = "" if r["part_hw"] is None else f"; part effects {r['part_hw']:.4f}"
            print(
                f"{name:10s} {coding:12s} {r['fit']}; CV error {r['cv'] if r['cv'] is None else round(r['cv'], 4)}"
                f" ({r['cv_rows']}); median half-width: {r['stage_n']} stage choices {r['stage_hw']:.4f}{part}, "
                f"{r['designs']} designs {r['design_hw']:.4f}; {r['predictable']}/{r['evaluated']} evaluated "
                f"genomes predictable; each own genome left out: {r['own_cv']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
