"""Search strategies compared on a benchmark table: samplers x early stopping x many search seeds.

Every run is a real study (Optuna storage in memory, studies.search.StudySearch asking and telling)
answered by the table backend (studies.table_backend) on a simulated clock. A found genome is
scored by its table mean over seeds (what the search would have found, not the one noisy draw it
saw). Printed per strategy, over the search seeds (median [25th-75th percentile]):
  - hypervolume of the found set, normalised by the table's true front, after k trials and after
    a share of the simulated compute (sum of the trials' wall times, pruned ones counted in part);
  - trials until each published design in the table is matched or beaten within noise: some found
    genome with FLOPs <= the design's and mean top-1 >= the design's - margin, where margin is two
    standard errors of the difference of two genomes' means, from the table's own seed spread
    (the pooled standard deviation of one trial's top-1);
  - share of the table's true front (on mean top-1 and FLOPs) found at the budget.
A partial table (a build still running) is used as far as it goes: genomes with every seed only;
a sampler's proposal outside them is told FAIL and asked again, not counted (said in the output).
Also measured: milliseconds per simulated trial, in memory and on a journal file (studies.run's).
A strategy beats random search only when a bootstrap 95 % interval of the difference of its median
hypervolume at the budget from random's (over the search seeds) lies above zero; otherwise it ties.
Last line: best=<strategy> hv_at_budget_vs_random=<ratio of medians> (random when nothing beats it).

--heldout judges what each strategy REPORTS on seeds it never saw: strategies see the first half of
the table's seeds (--see) and are scored on the rest (--score); "designed" is studies.designed.DesignedSampler
run through the searcher exactly as a study with [sampler] name = "designed" runs it
(docs/search_design.md).

    python bench/search_strategies.py [--table studies/tables/placement_table.csv] [--seeds 20] [--budget 48]
                                      [--samplers random,tpe,nsga2,gp] [--stoppings none,pareto,asha] [--jobs 2]
    python bench/search_strategies.py --quick    # seconds: the smoke table, checks the script
    python bench/search_strategies.py --heldout [--see 0,1 --score 2] [--samplers random,tpe,nsga2,gp,designed]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import optuna  # noqa: E402

import effects as fx  # noqa: E402
from analysis.pareto import hypervolume  # noqa: E402
from effects import pareto_mask  # noqa: E402
from searchspace import space  # noqa: E402
from searchspace.catalog import inside as published_in_space  # noqa: E402
from searchspace.errors import UserError  # noqa: E402
from searchspace.genome import Genome  # noqa: E402
from studies import config as config_mod  # noqa: E402
from studies import designed  # noqa: E402
from studies.asha import stopping_rule  # noqa: E402
from studies.search import GenomeSpace, SamplerSpec, StudySearch  # noqa: E402
from studies.table import Table, default_csv  # noqa: E402
from studies.table_backend import TableBackend  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)
DIRS = ["maximize", "minimize"]
RANDOM = ("random", "none")  # the baseline strategy
DEFAULT_SAMPLERS = "random,tpe,nsga2,gp"


class BenchSampler(SamplerSpec):
    """SamplerSpec plus Optuna's GPSampler (not one of the study configs' samplers)."""

    def build(self, storage=None, log=None):
        if self.name == "gp":
            return optuna.samplers.GPSampler(seed=self.seed)
        return super().build(storage, log)


def gp_available() -> str | None:
    try:
        s = optuna.create_study(directions=DIRS, sampler=optuna.samplers.GPSampler(seed=0))
        for _ in range(3):
            t = s.ask()
            s.tell(t, [t.suggest_categorical("x", ["a", "b", "c"]) == "a", 1.0])
        t = s.ask()
        t.suggest_categorical("x", ["a", "b", "c"])
        return None
    except Exception as e:  # older Optuna, or no multi-objective GP
        return f"{type(e).__name__}: {e}"


STOPPINGS = {"none": None, "pareto": "pareto", "asha": "top1"}  # bench name -> [early_stopping] rule


def make_rule(stopping: str, cfg):
    """No stopping, or the config's [early_stopping] rungs under the Pareto-aware rule or ASHA on top-1."""
    rule = STOPPINGS[stopping]
    overrides = {"early_stopping.asha": rule is not None} | ({"early_stopping.rule": rule} if rule else {})
    return stopping_rule(config_mod.with_overrides(cfg, overrides))


def one_run(
    table,
    cfg,
    spec,
    sampler: str,
    stopping: str,
    seed: int,
    budget: int,
    concurrency: int,
    storage=None,
    trial_seeds: tuple[int, ...] = (0, 1),
):
    """One search of `budget` trials on the table; "designed" runs studies.designed.DesignedSampler
    through the searcher exactly as a study with [sampler] name = "designed" does: its trials under
    the first of `trial_seeds`, confirmation under the others, the screen drawn with `seed`."""
    storage = storage or optuna.storages.InMemoryStorage()
    name = f"bench-{sampler}-{stopping}-{seed}"
    optuna.create_study(study_name=name, storage=storage, directions=DIRS)
    plan = designed.Plan(
        spec,
        budget,
        batch=max(concurrency, 2),
        seed=trial_seeds[0],
        confirm=cfg.budget.confirm,
        designs=tuple(published_in_space(spec)),
        confirm_seeds=tuple(trial_seeds[1:]) or trial_seeds[:1],
        costs=table_costs(table, cfg.target.convention),
        multiple=designed_multiple(sampler),
        screen_seed=seed,
    )
    search = StudySearch(
        GenomeSpace(spec),
        cfg.objectives,
        name,
        storage,
        BenchSampler(sampler.partition(":")[0], seed, cfg.sampler.population, plan),
        table.epochs,
        {"seed": seed},
        log=lambda *_: None,
    )
    rule = make_rule(stopping, cfg)
    backend = TableBackend(table, cfg, rule=rule, seed=seed, on_missing="skip")
    try:
        if isinstance(storage, optuna.storages.InMemoryStorage):
            backend.run(search, budget, concurrency)
        else:  # what studies.run does: a mirror in memory, one write per trial
            backend.tune(cfg, {"concurrency": concurrency}, search, budget)
    except UserError:  # a partial table: the sampler kept proposing genomes it does not hold
        backend.skipped = -backend.skipped - 1  # marks the run as given up (counted in the output)
    study = optuna.load_study(study_name=name, storage=storage)
    trials = sorted(
        (t for t in study.get_trials(deepcopy=False) if "sim_end_s" in t.user_attrs),  # answered
        key=lambda t: t.user_attrs["sim_end_s"],
    )
    return trials, backend.skipped


def designed_multiple(sampler: str) -> float:
    """'designed' (the screen is 2x the effect parameters) or 'designed:1.5' (1.5x)."""
    _, _, m = sampler.partition(":")
    try:
        return float(m) if m else designed.SCREEN_MULTIPLE
    except ValueError:
        raise UserError(
            f"sampler {sampler!r}: expected designed or designed:<multiple>, e.g. designed:1.5"
        ) from None


def table_costs(table, conv: str):
    """effects.StageCosts counted from the table's own rows (every genome of the space is there)."""
    flops = {k: v[0][f"flops_{conv}"] for k, v in table.rows.items()}
    params = {k: v[0][f"params_{conv}"] for k, v in table.rows.items()}
    return fx.StageCosts(
        {}, count=lambda g, _t: {"flops": float(flops[g.key]), "params": float(params[g.key])}
    )


def runs_of(trials, table, conv: str) -> fx.Runs:
    """The completed trials of a table-backed study as the effects model's runs."""
    rows = []
    for t in trials:
        if t.state != optuna.trial.TrialState.COMPLETE:
            continue
        key = t.user_attrs["genome_key"]
        row = table.rows[key][0]
        rows.append(
            {
                "key": key,
                "genome": Genome.from_json(row["genome"]),
                "seed": int(t.user_attrs.get("table_seed", 0)),
                "y": float(t.values[0]),
                "flops": float(row[f"flops_{conv}"]),
                "params": float(row[f"params_{conv}"]),
                "kind": "search",
                "design": None,
                "recipe": "common",
                "trial": t.number,
            }
        )
    # The table replays a (genome, seed) exactly: a repeat is the same run, not a replicate (kept, it
    # would be taken for zero pure error and blow up the lack-of-fit widening).
    frame = fx.runs_frame(rows).drop_duplicates(["key", "block"]).reset_index(drop=True)
    return fx.Runs(frame, "search")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="placement_table")
    ap.add_argument("--table", help="CSV (default studies/tables/<config>.csv)")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument(
        "--budget", type=int, default=48, help="trials per search (capped at half the usable genomes)"
    )
    ap.add_argument("--samplers", default=DEFAULT_SAMPLERS)
    ap.add_argument(
        "--stoppings", default="none,pareto,asha", help="none, pareto (Pareto-aware rungs), asha (top-1 only)"
    )
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes running search runs")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="seconds, checks the script: the smoke table, 2 search seeds of 4 trials, random and tpe "
        "(with --heldout: 2 search seeds, budgets 8,12, random, nsga2 and designed)",
    )
    ap.add_argument(
        "--heldout",
        action="store_true",
        help="strategies see some seeds and are scored on others (the front each reports, its verdicts)",
    )
    ap.add_argument(
        "--see", help="--heldout: seeds the strategies see (default: the first half of the table's)"
    )
    ap.add_argument("--score", help="--heldout: seeds they are scored on (default: the second half)")
    ap.add_argument("--budgets", default="24,48,96", help="--heldout: trial budgets scored")
    a = ap.parse_args()
    if a.heldout:
        try:
            heldout_main(a)
        except UserError as e:
            sys.exit(f"error: {e}")
        return
    if a.quick:
        a.config, a.table, a.seeds, a.budget, a.samplers, a.stoppings, a.jobs = (
            "smoke_table", None, 2, 4, "random,tpe", "none", 1,
        )  # fmt: skip
    stoppings = [es for es in a.stoppings.split(",") if es]
    unknown = [es for es in stoppings if es not in STOPPINGS]
    if unknown:
        sys.exit(f"--stoppings: unknown {', '.join(unknown)} (known: {', '.join(STOPPINGS)})")

    cfg = config_mod.load(a.config)
    spec = cfg.space
    full = Table.load(a.table or default_csv(cfg.name), cfg)
    table = Table(full.name, full.path, full.complete(), full.epochs, full.protocol)
    seeds_per_genome = min(len(v) for v in table.rows.values())  # some genomes may have more
    n_space = space.count(spec)
    partial = len(table.rows) < n_space
    print(
        f"table {full.path}: {len(full.rows)} of {n_space} genomes trained, {len(table.rows)} with all "
        f"{seeds_per_genome} seeds"
        + (
            " -- PARTIAL TABLE: results below are for this subset only; proposals "
            "outside it are skipped, not counted"
            if partial
            else ""
        )
    )
    budget = min(a.budget, max(4, len(table.rows) // 2))
    if budget < 16:
        print(
            f"note: a budget of {budget} trials lies inside every model-based sampler's random start-up (TPE and "
            "GP: 10 trials, NSGA-II: its first population), so they all draw what random search draws"
        )
    conc = cfg.budget.concurrency or 1
    conv = cfg.target.convention

    keys = list(table.rows)
    mean_top1 = {k: table.mean(k) for k in keys}
    flops = {k: table.rows[k][0][f"flops_{conv}"] for k in keys}
    pts = np.array([[mean_top1[k], flops[k]] for k in keys])
    true_front = {k for k, on in zip(keys, pareto_mask(pts, DIRS)) if on}
    ref = np.array([pts[:, 0].min() - 1e-3, pts[:, 1].max() * 1.001])
    hv_true = hypervolume(pts, DIRS, ref)
    # seed noise: the pooled within-genome variance of one trial's top-1 (genomes may have extra seeds)
    n_seeds = {k: len(table.rows[k]) for k in keys}
    dof = sum(n - 1 for n in n_seeds.values())
    ss = sum(np.var([r["top1"] for r in table.rows[k]]) * n_seeds[k] for k in keys)
    noise = float(np.sqrt(ss / dof)) if dof else 0.0
    designs = [(d.name, d.genome.key) for d in published_in_space(spec) if d.genome.key in table.rows]

    def margin_of(a_key, b_key) -> float:
        """Two genomes' means differ beyond noise when apart by more than 2 standard errors of the difference."""
        return 2 * noise * np.sqrt(1 / n_seeds[a_key] + 1 / n_seeds[b_key])

    margin = 2 * noise * np.sqrt(2 / seeds_per_genome)
    print(
        f"true front: {len(true_front)} genomes; seed noise: pooled sd of one trial's top-1 {noise:.4f} "
        f"({dof} degrees of freedom), so two {seeds_per_genome}-seed means differ beyond noise when apart by "
        f"> {margin:.4f}"
    )
    for k in sorted(true_front, key=flops.get):
        row = table.rows[k][0]
        print(
            f"  {row['menu']:<60} {mean_top1[k]:.4f} {flops[k] / 1e9:.3f} GFLOPs"
            + (f"  ({row['design']})" if row["design"] else "")
        )
    print(f"budget {budget} trials, {conc} at a time; {a.seeds} search seeds per strategy")
    for name, key in designs:
        cheaper = [k for k in keys if k != key and flops[k] <= flops[key]]
        beaten_by = sorted(
            (k for k in cheaper if mean_top1[k] > mean_top1[key] + margin_of(k, key)),
            key=lambda k: -mean_top1[k],
        )
        sd = np.std([r["top1"] for r in table.rows[key]], ddof=1)
        # one-sided 2-standard-error test: ~2.3 % of equally good genomes pass it by chance
        print(
            f"  {name:>12}: mean top-1 {mean_top1[key]:.4f} (sd {sd:.4f}, {n_seeds[key]} seeds), "
            f"{flops[key] / 1e9:.3f} GFLOPs, {'on' if key in true_front else 'off'} the true front of means; "
            f"{len(beaten_by)} of {len(cheaper)} genomes at no more FLOPs beat it beyond noise "
            f"(~{0.0228 * len(cheaper):.1f} would by chance if all were equal)"
        )
        for k in beaten_by[:5]:
            print(
                f"      {table.rows[k][0]['menu']:<60} {mean_top1[k] - mean_top1[key]:+.4f} ({n_seeds[k]} seeds)"
            )

    samplers = [s for s in a.samplers.split(",") if s]
    if "gp" in samplers:
        why = gp_available()
        if why:
            print(f"gp: not available in this Optuna ({why}); left out")
            samplers.remove("gp")
    strategies = [(s, es) for s in samplers for es in stoppings]

    def label(s, es):
        return s if es == "none" else f"{s}+{es}"

    def hv_of(found):
        return (
            hypervolume(np.array([[mean_top1[k], flops[k]] for k in found]), DIRS, ref) / hv_true
            if found
            else 0.0
        )

    # every (strategy, search seed) is an independent run: spread over processes (GP asks take ~1 s)
    jobs = [(s, es, seed) for s, es in strategies for seed in range(a.seeds)]
    _WORK.update(table=table, cfg=cfg, spec=spec, budget=budget, conc=conc)
    t_all = time.perf_counter()
    if a.jobs > 1:
        ctx = multiprocessing.get_context("fork")  # workers inherit the loaded table
        with ctx.Pool(a.jobs, initializer=_one_thread) as pool:
            done = pool.map(_run_job, jobs, chunksize=1)
    else:
        done = [_run_job(j) for j in jobs]
    wall_all = time.perf_counter() - t_all
    results = {k: [] for k in strategies}
    busy_s, n_all = 0.0, 0
    for (s, es, _), (trials, skipped, secs) in zip(jobs, done):
        results[(s, es)].append((trials, skipped))
        busy_s, n_all = busy_s + secs, n_all + len(trials) + abs(skipped)
    ms_mem = busy_s / max(1, n_all) * 1e3
    print(f"{len(jobs)} search runs in {wall_all:.0f} s on {a.jobs} process(es)")

    # compute axis: shares of the median compute of plain random search at the full budget
    def compute(trials):
        return np.cumsum([t.user_attrs.get("wall_s") or 0.0 for t in trials])

    c_ref = float(np.median([compute(tr)[-1] for tr, _ in results[RANDOM]])) if RANDOM in results else 1.0
    checkpoints = sorted({max(1, budget // 4), max(1, budget // 2), budget})
    shares = (0.25, 0.5, 1.0)
    print(
        f"\nnormalised hypervolume (1 = the table's true front), median [25%-75%] over {a.seeds} search seeds"
    )
    print(
        f"{'strategy':<14} "
        + " ".join(f"{'@' + str(k) + ' trials':>20}" for k in checkpoints)
        + " "
        + " ".join(f"{'@' + format(f, '.0%') + ' compute':>20}" for f in shares)
        + f" {'front share':>13} {'skipped':>8} {'gave up':>8}"
    )
    summary = {}
    for (s, es), runs in results.items():
        by_trials = {k: [] for k in checkpoints}
        by_compute = {f: [] for f in shares}
        share, skipped, gave_up = [], [], []
        for trials, sk in runs:
            done = [
                t.user_attrs.get("genome_key") if t.state == optuna.trial.TrialState.COMPLETE else None
                for t in trials
            ]
            for k in checkpoints:
                by_trials[k].append(hv_of({g for g in done[:k] if g}))
            cum = compute(trials)
            for f in shares:
                by_compute[f].append(hv_of({g for g, c in zip(done, cum) if g and c <= f * c_ref}))
            share.append(len({g for g in done if g} & true_front) / len(true_front))
            skipped.append(sk if sk >= 0 else -sk - 1)
            gave_up.append(sk < 0)
        summary[(s, es)] = by_trials[budget]

        def q(v):
            return f"{np.median(v):.3f} [{np.percentile(v, 25):.3f}-{np.percentile(v, 75):.3f}]"

        print(
            f"{label(s, es):<14} "
            + " ".join(f"{q(by_trials[k]):>20}" for k in checkpoints)
            + " "
            + " ".join(f"{q(by_compute[f]):>20}" for f in shares)
            + f" {np.median(share):>13.2f} "
            f"{np.median(skipped):>8.0f} {sum(gave_up):>8}"
        )

    print(
        f"\ntrials until each published design is matched or beaten within noise ({margin:.4f}): median over "
        f"seeds (- = in fewer than half of the seeds within {budget} trials)"
    )
    print(f"{'strategy':<14} " + " ".join(f"{n:>12}" for n, _ in designs))
    for (s, es), runs in results.items():
        cells = []
        for _, dkey in designs:
            hits = []
            for trials, _ in runs:
                hit = None
                for i, t in enumerate(trials):
                    g = t.user_attrs.get("genome_key")
                    if (
                        t.state == optuna.trial.TrialState.COMPLETE
                        and flops[g] <= flops[dkey]
                        and mean_top1[g] >= mean_top1[dkey] - margin_of(g, dkey)
                    ):
                        hit = i + 1
                        break
                hits.append(hit if hit is not None else np.inf)
            med = np.median(hits)
            cells.append(f"{med:>12.0f}" if np.isfinite(med) else f"{'-':>12}")
        print(f"{label(s, es):<14} " + " ".join(cells))

    # the table backend's own cost per trial, on the storage studies.run uses (a journal file)
    with tempfile.TemporaryDirectory() as tmp:
        from studies.storage import open_or_create

        storage = open_or_create(str(Path(tmp) / "study.journal"))
        t0 = time.perf_counter()
        trials, skipped = one_run(table, cfg, spec, "nsga2", "asha", 0, budget, conc, storage=storage)
        ms_journal = (time.perf_counter() - t0) / max(1, len(trials) + abs(skipped)) * 1e3
    print(
        f"\nper simulated trial (or skipped proposal, on a partial table): {ms_mem:.1f} ms in memory (all "
        f"strategies), {ms_journal:.1f} ms on a journal file "
        f"(nsga2+asha); asha = plain ASHA on top-1 (studies.asha.ASHA), pareto = studies.asha.ParetoRungs"
    )
    # a strategy beats random only beyond the search-seed noise: bootstrap the difference of medians
    medians = {k: float(np.median(v)) for k, v in summary.items()}
    base = summary.get(RANDOM)
    if base is None:  # random search not run: nothing to compare against
        best = max(medians, key=medians.get)
        print(f"best={label(*best)} hv_at_budget_vs_random=nan")
        return
    print(
        f"\nhypervolume at {budget} trials against random search: difference of medians, bootstrap 95 % "
        f"interval over the {a.seeds} search seeds"
    )
    rng, winners = np.random.default_rng(0), []
    for k, v in summary.items():
        if k == RANDOM:
            continue
        lo, hi = median_diff_interval(np.asarray(v), np.asarray(base), rng)
        verdict = "beats random" if lo > 0 else "worse than random" if hi < 0 else "tie"
        print(f"  {label(*k):<14} {medians[k] - medians[RANDOM]:+.3f} [{lo:+.3f}, {hi:+.3f}] {verdict}")
        if lo > 0:
            winners.append(k)
    best = max(winners, key=medians.get) if winners else RANDOM
    print(f"best={label(*best)} hv_at_budget_vs_random={medians[best] / medians[RANDOM]:.3f}")


def median_diff_interval(x, y, rng, n=4000) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of median(x) - median(y), x and y resampled independently."""
    bx = np.median(rng.choice(x, (n, len(x))), axis=1)
    by = np.median(rng.choice(y, (n, len(y))), axis=1)
    return tuple(np.percentile(bx - by, [2.5, 97.5]))


def verdict_kind(text) -> str:
    """A model verdict's category (effects.verdicts): front, beaten, open or none."""
    text = str(text)
    if text.startswith("on the model front"):
        return "front"
    if text.startswith("beaten"):
        return "beaten"
    if text.startswith("not resolved"):
        return "open"
    return "none"


def judge(runs: fx.Runs, reported: list[str] | None, costs, verdicts: bool = True) -> dict:
    """What a strategy reports from its runs: `reported` genome keys (None: its observed front, genomes
    by their mean over the runs it saw), the effects model's verdicts on the published designs and
    their interval half-widths."""
    fr = runs.frame
    if reported is None:
        means = fr.groupby("key").agg(y=("y", "mean"), flops=("flops", "first"))
        on = pareto_mask(means[["y", "flops"]].to_numpy(float), DIRS)
        reported = list(means.index[on])
    out = {"reported": reported, "verdicts": {}, "half_widths": []}
    model = designed.fit_or_none(runs) if verdicts else None
    if model is not None:
        cands, _ = fx.candidates(model, runs, costs=costs)
        v = fx.verdicts(model, fx.predictions(model, cands), runs)
        for r in v.to_dict("records"):
            out["verdicts"][r["design"]] = verdict_kind(r["verdict"])
            if r.get("high") is not None and np.isfinite(r.get("high", np.nan)):
                out["half_widths"].append((r["high"] - r["low"]) / 2)
    return out


def model_front_keys(model: fx.Fit | None, runs: fx.Runs, costs) -> list[str]:
    if model is None:
        return []
    cands, _ = fx.candidates(model, runs, costs=costs)
    return list(fx.model_front(fx.predictions(model, cands))["key"])


def _heldout_job(job):
    """One search seed of one strategy at every budget; a label per way of reporting (see heldout_main)."""
    sampler, seed, budgets = job
    w = _WORK
    table, cfg, spec, conv, costs = w["seen"], w["cfg"], w["spec"], w["conv"], w["costs"]
    out = {}

    def record(label, b, runs, reported):
        out.setdefault(label, {})[b] = {
            **judge(runs, reported, costs),
            "genomes": runs.frame["key"].nunique(),
        }

    if sampler.startswith("designed"):
        for b in budgets:  # the screen and the confirmation share depend on the budget: one run per budget
            trials, _ = one_run(
                table, cfg, spec, sampler, "none", seed, b, w["conc"], trial_seeds=w["trial_seeds"]
            )
            runs = runs_of(trials, table, conv)
            record(sampler, b, runs, model_front_keys(designed.fit_or_none(runs), runs, costs))
            record(f"{sampler}/obs", b, runs, None)
        return out
    trials, _ = one_run(table, cfg, spec, sampler, "none", seed, max(budgets), w["conc"])
    for b in budgets:  # a sampler does not know its budget: the first b trials are the run at b
        runs = runs_of(trials[:b], table, conv)
        record(sampler, b, runs, None)
        if sampler == "random":  # the same runs reporting the effects model's front
            record("random/model", b, runs, model_front_keys(designed.fit_or_none(runs), runs, costs))
    return out


def seed_split(full, see: str | None, score: str | None) -> tuple[list[int], list[int]]:
    """The seeds a strategy sees and the seeds it is scored on (default: the first and the second half
    of the seeds every genome of the table has)."""
    common = sorted(set.intersection(*({r["seed"] for r in v} for v in full.rows.values())))

    def parse(text, what):
        try:
            return sorted({int(x) for x in text.split(",") if x})
        except ValueError:
            raise UserError(f"--{what}: expected comma-separated seeds, got {text!r}") from None

    seen = parse(see, "see") if see else common[: len(common) // 2]
    held = parse(score, "score") if score else common[len(common) // 2 :]
    if not seen or not held or set(seen) & set(held):
        raise UserError(
            f"seeds seen {seen} and scored {held}: both needed and disjoint (the table has {common})"
        )
    missing = sorted(set(seen + held) - set(common))
    if missing:
        raise UserError(f"seed(s) {missing} are not in every genome of the table (it has {common})")
    return seen, held


def heldout_main(a) -> None:
    """Strategies see the SEEN seeds only; each is scored on the HELD seeds, which it never saw: the
    hypervolume of the front it reports (designed: the effects model's front; the others: their
    observed front), each reported genome valued by its mean over the HELD seeds, and the agreement
    of its model verdicts with those of the effects model of the whole table (every seed)."""
    if a.quick:
        a.seeds, a.budgets = min(a.seeds, 2), "8,12"
    cfg = config_mod.load(a.config)
    spec = cfg.space
    full = Table.load(a.table or default_csv(cfg.name), cfg)
    conv = cfg.target.convention
    seen_seeds, held_seeds = seed_split(full, a.see, a.score)
    rows = {k: {r["seed"]: r for r in v} for k, v in full.rows.items()}
    keys = list(rows)
    if len(keys) < 8:
        raise UserError(f"table {str(full.path)!r}: {len(keys)} genomes; --heldout needs more")
    seen = Table(
        full.name, full.path, {k: [rows[k][s] for s in seen_seeds] for k in keys}, full.epochs, full.protocol
    )
    flops = {k: rows[k][seen_seeds[0]][f"flops_{conv}"] for k in keys}
    held = {k: float(np.mean([rows[k][s]["top1"] for s in held_seeds])) for k in keys}
    pts = np.array([[held[k], flops[k]] for k in keys])
    ref = np.array([pts[:, 0].min() - 1e-3, pts[:, 1].max() * 1.001])
    hv_true = hypervolume(pts, DIRS, ref)
    costs = table_costs(seen, conv)
    every = fx.runs_from_table(full.path, seeds=sorted(set(seen_seeds + held_seeds)))
    every.frame = every.frame[every.frame["key"].isin(keys)].reset_index(drop=True)
    truth = judge(every, [], costs)["verdicts"]
    budgets = sorted({min(int(b), len(keys)) for b in a.budgets.split(",") if b})
    samplers = [s for s in a.samplers.split(",") if s]
    if a.samplers == DEFAULT_SAMPLERS:
        samplers = ["random", "nsga2", "designed"] if a.quick else [*samplers, "designed"]
    if "gp" in samplers and gp_available():
        samplers.remove("gp")
    if "random" not in samplers:
        samplers.insert(0, "random")
    print(
        f"held-out comparison on {full.path}: {len(keys)} genomes; strategies see seeds {seen_seeds} only and "
        f"are scored on seeds {held_seeds}, which they never saw"
    )
    print(
        "  score 1: hypervolume of the REPORTED front (designed and random/model: the effects model's front; "
        f"the others: their observed front), each genome valued by its mean over seeds {held_seeds}, "
        "normalised by the held-out front of the whole table"
    )
    print("  score 2: share of the published designs whose model verdict (front / beaten / open) matches the")
    print(
        f"           effects model of the whole table (seeds {sorted(set(seen_seeds + held_seeds))}): "
        + ", ".join(f"{d} {v}" for d, v in truth.items())
    )
    print(
        f"  designed: screen and proposals under seed {seen_seeds[0]}, confirmation "
        f"({'seeds ' + ', '.join(map(str, seen_seeds[1:])) if seen_seeds[1:] else 'no other seen seed'}: the "
        f"model front and the open designs, the last {cfg.budget.confirm:.0%} of the budget); "
        "designed/obs: the same runs reporting their observed front; random/model: random's runs reporting "
        "the effects model's front"
    )
    print(f"budgets {budgets}, {a.seeds} search seeds, concurrency {cfg.budget.concurrency or 1}")
    jobs = [(s, seed, budgets) for s in samplers for seed in range(a.seeds)]
    _WORK.update(
        seen=seen, cfg=cfg, spec=spec, conv=conv, costs=costs, conc=cfg.budget.concurrency or 1,
        trial_seeds=tuple(seen_seeds),
    )  # fmt: skip
    t0 = time.perf_counter()
    if a.jobs > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(a.jobs, initializer=_one_thread) as pool:
            done = pool.map(_heldout_job, jobs, chunksize=1)
    else:
        done = [_heldout_job(j) for j in jobs]
    print(f"{len(jobs)} search runs in {time.perf_counter() - t0:.0f} s on {a.jobs} process(es)")

    def hv(keys_):
        ks = [k for k in keys_ if k in held]
        return hypervolume(np.array([[held[k], flops[k]] for k in ks]), DIRS, ref) / hv_true if ks else 0.0

    score: dict = {}
    labels = list(dict.fromkeys(label for res in done for label in res))
    for res in done:
        for s, by_budget in res.items():
            for b, r in by_budget.items():
                d = score.setdefault((s, b), {"hv": [], "agree": [], "size": [], "hw": [], "genomes": []})
                d["hv"].append(hv(r["reported"]))
                d["agree"].append(
                    np.mean([r["verdicts"].get(k, "none") == v for k, v in truth.items()])
                    if truth
                    else np.nan
                )
                d["size"].append(len(r["reported"]))
                d["hw"].append(np.median(r["half_widths"]) if r["half_widths"] else np.nan)
                d["genomes"].append(r["genomes"])
    rng, winners = np.random.default_rng(0), []
    for b in budgets:
        print(
            f"\n@{b} trials: median [25%-75%] over {a.seeds} search seeds; vs random: difference of medians [bootstrap 95 %]"
        )
        print(
            f"  {'strategy':<14} {'held-out hv':>20} {'vs random':>26} {'verdict agreement':>20} {'vs random':>26} "
            f"{'reported':>9} {'genomes':>8} {'design half-width':>18}"
        )
        base = score[("random", b)]
        for s in labels:
            d = score[(s, b)]

            def q(v):
                v = np.asarray(v, float)
                return f"{np.nanmedian(v):.3f} [{np.nanpercentile(v, 25):.3f}-{np.nanpercentile(v, 75):.3f}]"

            cells = []
            for m in ("hv", "agree"):
                if s == "random":
                    cells.append(f"{'':>26}")
                    continue
                x, y = np.asarray(d[m], float), np.asarray(base[m], float)
                lo, hi = median_diff_interval(x, y, rng)
                diff = np.median(x) - np.median(y)
                verdict = "beats" if lo > 0 else "worse" if hi < 0 else "tie"
                cells.append(f"{diff:+.3f} [{lo:+.3f}, {hi:+.3f}] {verdict:<5}")
                if m == "hv" and lo > 0:
                    winners.append((s, b))
            hw = np.asarray(d["hw"], float)
            hw_text = f"{np.nanmedian(hw):.4g}" if np.isfinite(hw).any() else "-"
            print(
                f"  {s:<14} {q(d['hv']):>20} {cells[0]:>26} {q(d['agree']):>20} {cells[1]:>26} "
                f"{np.median(d['size']):>9.0f} {np.median(d['genomes']):>8.0f} "
                f"{hw_text:>18}"
            )
    print("winners=" + (",".join(f"{s}@{b}" for s, b in winners) or "none"))


_WORK: dict = {}  # what every search run shares; set before the worker processes fork


def _one_thread() -> None:
    import torch  # GPSampler fits with torch: one thread per worker process

    torch.set_num_threads(1)


def _run_job(job):
    sampler, stopping, seed = job
    w, t0 = _WORK, time.perf_counter()
    trials, skipped = one_run(
        w["table"], w["cfg"], w["spec"], sampler, stopping, seed, w["budget"], w["conc"]
    )
    return trials, skipped, time.perf_counter() - t0


if __name__ == "__main__":
    main()
