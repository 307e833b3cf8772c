"""The driver side of a study: Ray, the searcher, references, resume, the closing summary."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import optuna
from optuna.trial import TrialState

from analysis import metrics
from analysis.load import genome_summary
from searchspace import catalog
from searchspace.errors import UserError
from trainers.record import Status

from . import config as config_mod
from . import storage as st
from .costs import stage_costs
from .search import CostLimits, GenomeSpace, SamplerSpec, StudySearch, recipe_label, trial_recipe
from .session import Session, record_config

REPO = Path(__file__).resolve().parent.parent
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _new_search(
    cfg, url, name, n_existing, spec, attrs, log, sampler=None, driver=None, limits=None
) -> StudySearch:
    return StudySearch(
        GenomeSpace(spec, driver, cfg.protocol["target"], cfg.references.recipe),
        cfg.objectives,
        name,
        url,
        sampler or SamplerSpec.of_study(cfg, n_existing, stage_costs(cfg)),
        cfg.fidelity.epochs,
        attrs,
        log,
        limits=limits,
    )


def cost_limits(cfg) -> CostLimits | None:
    """[constraints] as numbers ("1.10 x resnet50": that design's cost at the study's target), or None."""
    from searchspace import cost

    target = tuple((k, getattr(cfg.target, k)) for k in ("convention", "resolution", "num_classes"))
    limits = []
    for key, v in asdict(cfg.constraints).items():
        if v is None:
            continue
        factor, design = config_mod.parse_limit(v, f"constraints.{key}")
        name = key.removesuffix("_max")
        base = getattr(cost(catalog.get(design).genome, **dict(target)), name) if design else 1.0
        limits.append((name, factor * base))
    return CostLimits(tuple(limits), target) if limits else None


def evaluates_references(cfg, args) -> bool:
    """--reference forces the reference designs on, --no-reference off; else [references] evaluate."""
    if getattr(args, "no_reference", False):
        return False
    return bool(args.reference or cfg.references.evaluate)


def _enqueue_neighbours(study, designs, spec, n: int, seed: int, limits, log) -> int:
    """Enqueue up to n one-edit variants of `designs` (user attr "neighbour_of"), taking the designs in
    turn so each contributes, each design's variants in a seeded random order; variants over a
    [constraints] limit are passed over (their cost is known now). Only into a new study (nothing asked yet)."""
    import random

    from searchspace import space

    if (
        n <= 0
        or not designs
        or any(
            t.state != TrialState.WAITING or "neighbour_of" in t.user_attrs
            for t in study.get_trials(deepcopy=False)
        )
    ):
        return 0
    rng = random.Random(seed)
    own = {d.genome.key for d in designs}
    pools = []
    for d in designs:
        variants = [g for g in space.neighbours(d.genome, spec) if g.key not in own]
        rng.shuffle(variants)
        pools.append((d.name, variants))
    chosen, seen, checks = [], set(), 0
    while len(chosen) < n and any(v for _, v in pools) and checks < 8 * n:
        for name, variants in pools:
            while variants and len(chosen) < n and checks < 8 * n:
                g = variants.pop()
                if g.key in seen:
                    continue
                seen.add(g.key)
                checks += 1
                if limits is not None and any(v > 0 for v in limits.violations(limits.cost(g)).values()):
                    continue
                chosen.append((name, g))
                break
    for name, g in chosen:
        study.enqueue_trial(space.to_params(g, spec), user_attrs={"neighbour_of": name}, skip_if_exists=False)
    if chosen:
        log(f"enqueued {len(chosen)} one-edit variant(s) of the designs as the first trials")
    return len(chosen)


def _enqueue_known(study, designs, spec, attr: str, log, recipe: str | None = None) -> int:
    """Enqueue each design not yet present (finished, running or waiting) under user attr `attr`.
    With `recipe` ([references] recipe), a design trained under another recipe than the one it gets
    now is not present: it is enqueued again, and analysis reads its latest evaluation."""
    from searchspace import space

    def current(t) -> bool:  # trials asked before the "recipe" attr existed trained with the common one
        if recipe is None or t.state == TrialState.WAITING:
            return True
        wanted = recipe_label(trial_recipe(t.user_attrs.get(attr), recipe))
        return t.user_attrs.get("recipe", "common") == wanted

    have = {
        t.user_attrs.get(attr)
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("status") != Status.INTERRUPTED and current(t)
    }
    todo = [d for d in designs if d.name not in have]
    for d in todo:
        study.enqueue_trial(space.to_params(d.genome, spec), user_attrs={attr: d.name}, skip_if_exists=False)
    if todo:
        log(f"enqueued {len(todo)} known design(s): {', '.join(d.name for d in todo)}")
    return len(todo)


def run(cfg, session: Session, args) -> dict:
    """The study's trials through `session` (opened by studies.run): the references first, in their own
    study, then the search up to the trial budget; the report at the end."""
    stop, log, url, run_dir = session.stop, session.log, session.url, session.run_dir
    spec = cfg.space
    attrs = {"fidelity": cfg.protocol["fidelity"], "seed": cfg.seed, "reference": None}
    directions = [o["direction"] for o in cfg.objectives]
    summary = {"requeued": [], "ran": 0, "references": 0}
    from searchspace import space

    log(f"study {cfg.name}: {space.count(spec):,} genomes in the space; storage {st.describe(url)}")
    # Put the storage in order first (no backend needed): requeue a dead driver's trials, enqueue designs.
    ref, ref_waiting = None, 0
    if evaluates_references(cfg, args):  # in their own study, so they never steer the sampler
        ref = session.open(cfg.name + ".references", directions)
        record_config(ref, cfg)
        summary["requeued"] += session.recover(ref)
        _enqueue_known(ref, catalog.inside(spec), spec, "reference", log, cfg.references.recipe)
        ref_waiting = len(ref.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    study = session.open(cfg.name, directions)
    record_config(study, cfg)
    requeued = session.recover(study)  # a live driver's (another run folder on this storage) are left alone
    if requeued:
        log(f"resuming: trial(s) {requeued} of a stopped driver marked FAIL (interrupted) and requeued")
    summary["requeued"] += requeued
    if args.seed_known:
        _enqueue_known(study, catalog.inside(spec), spec, "seeded_from", log)
    limits = cost_limits(cfg)
    if limits:
        log(
            "constraints: "
            + ", ".join(f"{n} <= {metrics.fmt(n, v)}" for n, v in limits.limits)
            + " (a genome over a limit is recorded infeasible, never trained)"
        )
    if cfg.sampler.name != "designed":  # the designed strategy's first phase is its own screen
        _enqueue_neighbours(
            study, catalog.inside(spec), spec, cfg.references.neighbours, cfg.seed, limits, log
        )
    done, want = st.counted(study), cfg.budget.trials
    summary["before"] = done
    if done >= want and not ref_waiting:
        log(f"study {cfg.name} already has {done} of {want} trials; nothing to run")
        summary["effects"] = _fit_effects(url, cfg)
        summary["report"] = _report(cfg, url, run_dir, log, summary["effects"])
        return summary

    try:
        summary["resources"] = session.start(cfg)
        if ref_waiting and not stop.should_stop():
            log(f"evaluating {ref_waiting} reference design(s) in study {ref.study_name!r}")
            ref_attrs = {k: v for k, v in attrs.items() if k != "reference"}  # keep the name set at enqueue
            search = _new_search(
                cfg,
                url,
                ref.study_name,
                0,
                spec,
                ref_attrs,
                log,
                sampler=SamplerSpec("random", cfg.seed),
                driver=session.driver_id,
            )
            with session.progress(ref_waiting, 0, "references") as search.progress:
                # a reference is measured in full: an early-stopped design would have no proxy result
                session.run(cfg, search, ref_waiting, "references", early_stop=False)
            summary["references"] = len(search.finished)
        if done < want and not stop.should_stop():
            log(f"running {want - done} trial(s) ({done} of {want} already done)")
            search = _new_search(
                cfg,
                url,
                cfg.name,
                len(study.trials),
                spec,
                attrs,
                log,
                driver=session.driver_id,
                limits=limits,
            )
            with session.progress(want, done) as search.progress:
                session.run(cfg, search, want - done, "search")
            summary["ran"] = len(search.finished)
            summary["skipped"] = len(search.skipped)
    finally:
        session.finish()
    if stop.signum is not None or (stop.time_up() and st.counted(study) < want):
        summary["stopped"] = stop.reason
        stopped = session.stopped
        log(f"stopped: {stop.reason}" + (f"; trial(s) {stopped} stopped and requeued" if stopped else ""))
        summary["requeued_now"] = stopped
    summary["effects"] = _fit_effects(url, cfg)
    summary["report"] = _report(cfg, url, run_dir, log, summary["effects"])
    return summary


def _report(cfg, url, run_dir: Path, log, fitted=None):
    """The HTML report and the dashboard figures (analysis package), if it is there; `fitted`: the
    study's effects model, fitted once at the run's end for both and for the summary (None: each fits
    its own)."""
    out = run_dir / "report.html"
    try:
        import analysis
    except ImportError as e:
        log(f"report skipped: analysis not importable ({e})")
        return None
    try:  # url: a journal path or an RDB URL
        analysis.write_report(url, cfg.name, out, costs=stage_costs(cfg), effects=fitted)
    except Exception as e:  # the study is stored; a report problem must not fail the run
        log(f"report skipped: {type(e).__name__}: {e}")
        out = None
    try:
        analysis.push_to_dashboard(st.open_or_create(url), cfg.name, costs=stage_costs(cfg), effects=fitted)
    except Exception as e:
        log(f"dashboard figures skipped: {type(e).__name__}: {e}")
    return out


def print_summary(cfg, storage, url, run_dir: Path, summary: dict) -> None:
    study = optuna.load_study(study_name=cfg.name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    states = {}
    for t in trials:
        key = t.user_attrs.get("status") or t.state.name.lower()
        states[key] = states.get(key, 0) + 1
    print(
        f"\nstudy {cfg.name}: {st.counted(study)} of {cfg.budget.trials} trials "
        f"({', '.join(f'{n} {k}' for k, n in sorted(states.items()))}); this run {summary.get('ran', 0)} trial(s) "
        f"in {summary['wall_s']:.0f}s"
    )
    if summary.get("stopped"):
        print(f"ended early: {summary['stopped']} (stopped trials were requeued; run again to continue)")
    elif cfg.budget.minutes is not None:
        print(f"ended by the trial budget ({cfg.budget.trials}), within {cfg.budget.minutes:g} minute(s)")
    if st.skipped(study):
        print(
            f"skipped before training: {st.skipped(study)} genome(s) over [constraints] (stored infeasible with "
            f"their costs, not counted in the {cfg.budget.trials}); this run {summary.get('skipped', 0)}"
        )
    ref = st.find_study(storage, cfg.name + ".references")
    red = _rediscovery(storage, cfg) if ref else None
    single = sum(t.state == TrialState.COMPLETE for t in trials)
    print_effects(storage, cfg.name, stage_costs(cfg), summary.get("effects"), red, single)
    names = [o["name"] for o in cfg.objectives]
    front = sorted(
        study.best_trials if any(t.state == TrialState.COMPLETE for t in trials) else [],
        key=lambda t: t.values[names.index("top1")],
        reverse=True,
    )
    front = [
        t for t in front if t.user_attrs.get("status") != Status.INFEASIBLE
    ]  # a sampler without constraints
    rows = [
        (
            str(t.number),
            *[metrics.fmt(n, v) for n, v in zip(names, t.values)],
            t.user_attrs.get("status", ""),
            genome_summary(t.user_attrs["genome"]) if "genome" in t.user_attrs else "",
        )
        for t in front
    ]
    print(
        "\nSingle runs at face value (each one run; the best of many noisy runs reads high: the winner's "
        "curse, so act on the model's answer above)"
    )
    print(f"Observed Pareto front of single runs ({len(front)} trial(s)):")
    _table(["trial", *names, "status", "genome"], rows)
    if red is not None:
        print_designs(cfg, red)
    print(f"\nrun folder : {run_dir}")
    print(
        f"storage    : {st.describe(url)}  (study {cfg.name!r}{', references in ' + repr(cfg.name + '.references') if ref else ''})"
    )
    print(f"dashboard  : optuna-dashboard {st.describe(url)}")
    if summary.get("report"):
        print(f"report     : {summary['report']}")


def _fit_effects(url, cfg):
    """The study's effects model for the report, the dashboard and the summary; None where it cannot
    be fitted (each of them then fits and says why, as before)."""
    from analysis import load_study
    from analysis.effects import of_study

    try:
        return of_study(load_study(url, cfg.name), costs=stage_costs(cfg))
    except Exception:
        return None


FRONT_ROWS = 12  # model-front rows the summary prints; the report has them all


def print_effects(storage, study_name: str, costs=None, effects=None, red=None, single: int = 0) -> None:
    """The summary's answer, first: the effects model's checks, its front and its verdicts on the
    published designs, each beside the single-run verdict (`red`: analysis.rediscovery's table;
    `single`: completed searched runs) with which to believe, then the largest effects. `effects`:
    the model if fitted."""
    from analysis.rediscovery import beside_single_runs
    from effects import LEVEL, effects_lines, fidelity_lines, model_lines, verdict_lines

    try:
        from analysis import load_study
        from analysis.effects import of_study

        e = effects if effects is not None else of_study(load_study(storage, study_name), costs=costs)
    except UserError as err:
        print(f"\neffects model: not fitted ({err}); only the single runs below answer, without intervals")
        return
    except Exception as err:  # the study is stored; the summary's analysis must not fail the run
        print(f"\neffects model: skipped ({type(err).__name__}: {err})")
        return
    print("\nThe answer: every run pooled through the effects model, each prediction with its interval")
    print("\n".join(model_lines(e)))
    top = e.front.sort_values("predicted", ascending=False)
    print(
        f"Model front over {e.coverage}: {len(top)} genome(s)"
        + (f", the {FRONT_ROWS} predicted highest shown (all in the report)" if len(top) > FRONT_ROWS else "")
    )
    _table(
        ["genome key", f"mean top-1 [{LEVEL:.0%}]", f"a new run [{LEVEL:.0%}]", "flops", "trained", "genome"],
        [
            (
                r.key,
                f"{r.predicted:.3f} [{r.low:.3f}, {r.high:.3f}]",
                f"[{r.run_low:.3f}, {r.run_high:.3f}]",
                metrics.fmt("flops", r.flops),
                "yes" if r.evaluated else "no",
                r.genome.summary(),
            )
            for r in top.head(FRONT_ROWS).itertuples()
        ],
    )
    print(f"Published designs, model verdicts (top-1: {LEVEL:.0%} intervals of its mean and of a new run):")
    print("\n".join(verdict_lines(e)))
    if e.fidelity is None:  # one rung: say which, and where the ladder says whether it holds
        print(
            f"  measured at this study's proxy ({_fidelity_text(e.runs.config)}); whether a verdict holds at higher fidelity: docs/fidelity.md"
        )
    if red is not None and len(e.designs):
        print("  beside the single-run verdict, which to believe:")
        for r in beside_single_runs(e, red, single).itertuples():
            print(f"  {r.design:<24} single run: {r.single_run:<22} -> {r.believe}")
    if e.fidelity is not None:  # runs of several rungs: where each verdict holds, what moves
        print("\n".join(fidelity_lines(e.fidelity)))
    print("Largest effects on proxy top-1 (against the baseline):")
    print("\n".join(effects_lines(e, top=5)))


def _rediscovery(storage, cfg):
    """analysis.rediscovery's table of the study (None when it cannot be made: a convenience)."""
    try:
        from analysis import load_study, rediscovery

        return rediscovery(load_study(storage, cfg.name), objectives=cfg.objectives)
    except Exception as e:  # the study is stored; the table is a convenience
        print(f"published designs: table skipped ({type(e).__name__}: {e})")
        return None


def print_designs(cfg, red) -> None:
    """Every published design inside the space: its proxy result (same protocol, '<name>.references'),
    what the search found against it at face value (analysis.rediscovery's verdict) and the nearest
    searched genome."""
    import pandas as pd

    names = [o["name"] for o in cfg.objectives]
    rows = []
    for r in red.to_dict("records"):
        near = (
            ""
            if pd.isna(r.get("nearest_trial"))
            else f"{int(r['nearest_trial'])} at {r['nearest_distance']:.2f}"
        )
        rows.append(
            (
                r["design"],
                *[
                    metrics.fmt(n, None if pd.isna(r[f"{n}_proxy"]) else float(r[f"{n}_proxy"]))
                    for n in names
                ],
                r["recipe"] if isinstance(r.get("recipe"), str) else "-",
                r["verdict"],
                near,
            )
        )
    print(
        f"Published designs in the space, single runs ({len(rows)}; proxy results under the study's protocol, "
        f'recipe: what each trained with, [references] recipe = "{cfg.references.recipe}"):'
    )
    _table(
        [
            "design",
            *[f"{n} (proxy)" for n in names],
            "recipe",
            "face value (single runs)",
            "nearest trial at distance",
        ],
        rows,
    )


def _table(header, rows) -> None:
    rows = [tuple(header)] + [tuple(map(str, r)) for r in rows]
    w = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for j, r in enumerate(rows):
        print("  " + "  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip())
        if j == 0:
            print("  " + "  ".join("-" * x for x in w))


def _fidelity_text(config: dict) -> str:
    """The proxy a study measured at, in a few words (its [fidelity] table)."""
    f = config.get("fidelity") or {}
    bits = [
        f"{f['resolution']} px" if "resolution" in f else None,
        f"width {f['width']:g}" if "width" in f else None,
    ]
    bits.append(f"{f['epochs']} epochs" if "epochs" in f else None)
    return ", ".join(b for b in bits if b) or "its [fidelity]"
