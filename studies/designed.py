"""A search designed for estimation: screen, fit and propose, confirm (docs/search_design.md).

The effects model (the effects package) judges every genome through one additive model, so the trials
should be chosen to estimate it well, not only to look good one run at a time:

1. `screen(spec, n)`: a first phase chosen for estimation. Over the effects coding's columns (each
   factor's levels against its baseline), the n rows that maximise log det(X'X) (D-optimal):
   - when the space is a full product of its factors (every stage menu combines with every other,
     e.g. placement_table), each factor's column starts balanced (every level floor(n/L) or
     ceil(n/L) times) and rows swap levels within a column while log det improves (a balanced
     coordinate exchange: balance is kept exactly, correlations fall as the determinant rises);
   - otherwise, a Fedorov exchange over a candidate pool of random genomes of the space.
   No orthogonal array fits these spaces at affordable sizes (4 x 4 x 5 x 6 levels need a run size
   divisible by 240 for strength 2), so the D-optimal choice is the one used.
2. `propose(fit, candidates, k)`: genomes on the optimistic model front (the Pareto set of the upper
   interval bound of predicted top-1 against FLOPs), widest intervals first: where a front point is
   least certain, and where a genome might still join the front.
3. `confirm(...)`: (genome, seed) pairs for the model front and the published designs in the space,
   blocked: every compared genome gets the same next seed, so the seed's shift cancels in contrasts.

`Plan` puts the three together over one study's trial budget (`[sampler] name = "designed"`,
`[budget] confirm`), as a pure function of what the study holds; `DesignedSampler` is the Optuna
sampler that follows it, batch by batch (studies.search.SamplerSpec builds it like any other sampler).
The designs are plain numpy over the coding of effects.Coding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

import effects as fx
from analysis import effects as study_effects
from analysis.load import read_genome
from effects import pareto_mask
from searchspace import space
from searchspace.errors import UserError
from searchspace.genome import Genome
from trainers.record import Status

POOL = 4000  # candidate genomes drawn for the screen when the space is larger (or not a product)
SCREEN_MULTIPLE = 2.0  # screen size as a multiple of the effect parameters (docs/search_design.md)
RIDGE = 1e-6  # keeps log det finite while a start design is still singular
CONFIRM_SHARE = 0.25  # [budget] confirm: the share of the trials kept for confirmation seeds
EXTRA_SEEDS = 3  # confirmation seeds beyond the study's own: seed+1 .. seed+3


class _RandomAnswers:
    """A trial that answers every categorical question at random (space.suggest takes any such object)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def suggest_categorical(self, name, choices):
        return choices[int(self.rng.integers(len(choices)))]


def pool(spec, size: int = POOL, seed: int = 0) -> list[Genome]:
    """Every genome of the space when it has at most `size`, else `size` random draws (distinct)."""
    if space.count(spec) <= size:
        return space.enumerate_genomes(spec, limit=size)
    rng, out = np.random.default_rng(seed), {}
    for _ in range(size * 3):
        g = space.suggest(_RandomAnswers(rng), spec)
        out.setdefault(g.key, g)
        if len(out) >= size:
            break
    return list(out.values())


def coding_of(genomes: Sequence[Genome]) -> fx.Coding:
    """The effects model's coding of these genomes' factors (one block: no block columns)."""
    return fx.Coding.of([fx.factors_of(g) for g in genomes], [fx.block(0)])


def parameters(spec) -> int:
    """How many effect parameters the model of this space estimates (intercept included)."""
    return len(coding_of(pool(spec)).columns)


def screen_size(spec, multiple: float = SCREEN_MULTIPLE) -> int:
    return int(math.ceil(multiple * parameters(spec)))


def _logdet(X: np.ndarray) -> float:
    """log det(X'X + ridge I). With fewer rows than columns (a screen smaller than the model, as in
    the large spaces) the n x n form is used: det(X'X + rI_p) = r^(p-n) det(XX' + rI_n)."""
    n, p = X.shape
    if n < p:
        sign, val = np.linalg.slogdet(X @ X.T + RIDGE * np.eye(n))
        val += (p - n) * math.log(RIDGE)
    else:
        sign, val = np.linalg.slogdet(X.T @ X + RIDGE * np.eye(p))
    return float(val) if sign > 0 else -math.inf


def screen(
    spec, n: int | None = None, seed: int = 0, multiple: float = SCREEN_MULTIPLE, pool_size: int = POOL
) -> list[Genome]:
    """n genomes chosen for estimating the effects model (see the module docstring); n defaults to
    `multiple` x the number of effect parameters."""
    cands = pool(spec, size=pool_size, seed=seed)
    coding = coding_of(cands)
    n = n or int(math.ceil(multiple * len(coding.columns)))
    if n < 1:
        raise UserError(f"screen size {n}: expected at least 1")
    facs = coding.factors
    levels = {f: [coding.baselines[f], *coding.levels[f]] for f in facs}
    by_combo = {tuple(fx.factors_of(g)[f] for f in facs): g for g in cands}
    rng = np.random.default_rng(seed)
    if len(by_combo) == math.prod(len(v) for v in levels.values()):
        combos = _balanced_exchange(coding, levels, n, rng)
        return [by_combo[c] for c in combos]
    return _fedorov(coding, cands, n, rng)


def _rows(coding: fx.Coding, levels: Mapping[str, list[str]], idx: np.ndarray) -> np.ndarray:
    """Design rows of level indices (n x factors): intercept, then each factor's one-hot minus baseline."""
    cols = [np.ones((len(idx), 1))]
    for j, f in enumerate(coding.factors):
        eye = np.eye(len(levels[f]))[:, 1:]  # level 0 is the baseline
        cols.append(eye[idx[:, j]])
    return np.hstack(cols)


def _balanced_exchange(coding, levels, n: int, rng, starts: int = 3, passes: int = 30) -> list[tuple]:
    """Balanced columns, then within-column swaps that raise log det(X'X); best of a few starts.
    A swap changes two rows, so X'X is updated by those rows alone (p x p work per tried swap)."""
    facs = coding.factors
    width = [len(levels[f]) - 1 for f in facs]
    start = np.cumsum([1, *width])[:-1]  # each factor's first column
    best, best_val = None, -math.inf
    for _ in range(starts):
        idx = np.column_stack(
            [rng.permutation(np.resize(np.arange(len(levels[f])), n)) for f in facs]
        ).astype(int)
        X = _rows(coding, levels, idx)
        M = X.T @ X + RIDGE * np.eye(X.shape[1])
        val = float(np.linalg.slogdet(M)[1])
        for _ in range(passes):
            improved = False
            for j in rng.permutation(len(facs)):
                sl = slice(start[j], start[j] + width[j])
                for a in range(n):
                    for b in range(a + 1, n):
                        if idx[a, j] == idx[b, j]:
                            continue
                        xa, xb = X[a].copy(), X[b].copy()
                        ya, yb = xa.copy(), xb.copy()
                        ya[sl], yb[sl] = xb[sl], xa[sl]
                        M2 = M - np.outer(xa, xa) - np.outer(xb, xb) + np.outer(ya, ya) + np.outer(yb, yb)
                        sign, v = np.linalg.slogdet(M2)
                        if sign > 0 and v > val + 1e-9:
                            val, improved, M = float(v), True, M2
                            X[a], X[b] = ya, yb
                            idx[[a, b], j] = idx[[b, a], j]
            if not improved:
                break
        if val > best_val:
            best, best_val = idx.copy(), val
    return [tuple(levels[f][best[i, j]] for j, f in enumerate(facs)) for i in range(n)]


def _fedorov(coding, cands: list[Genome], n: int, rng, passes: int = 20, sample: int = 400) -> list[Genome]:
    """Fedorov exchange over the pool: swap a design row for a pool row while log det(X'X) rises."""
    X = coding.matrix([fx.factors_of(g) for g in cands])
    chosen = list(rng.choice(len(cands), size=n, replace=len(cands) < n))
    val = _logdet(X[chosen])
    for _ in range(passes):
        improved = False
        for i in range(n):
            for c in rng.choice(len(cands), size=min(sample, len(cands)), replace=False):
                old = chosen[i]
                chosen[i] = c
                v = _logdet(X[chosen])
                if v > val + 1e-9:
                    val, improved = v, True
                else:
                    chosen[i] = old
        if not improved:
            break
    return [cands[i] for i in chosen]


def balance(genomes: Sequence[Genome]) -> dict[str, dict[str, int]]:
    """{factor: {level: count}} of a set of genomes."""
    rows = [fx.factors_of(g) for g in genomes]
    return {f: pd.Series([r[f] for r in rows]).value_counts().to_dict() for f in rows[0]}


def max_correlation(genomes: Sequence[Genome], coding: fx.Coding | None = None) -> float:
    """The largest |r| between effect columns of different factors over these genomes."""
    coding = coding or coding_of(genomes)
    X = coding.matrix([fx.factors_of(g) for g in genomes])[:, 1:]
    owner = [f for f, sl in coding.factor_slices().items() for _ in range(sl.stop - sl.start)]
    keep = X.std(axis=0) > 0
    r = np.corrcoef(X[:, keep], rowvar=False)
    own = np.array(owner)[keep]
    across = own[:, None] != own[None, :]
    return float(np.abs(r[across]).max()) if across.any() else 0.0


def propose(fit: fx.Fit, cands: pd.DataFrame, k: int, exclude: Iterable[str] = ()) -> list[Genome]:
    """k genomes on the optimistic model front (upper bound of predicted top-1 vs FLOPs), widest
    intervals first; genomes in `exclude` (keys: already run) only when too few others remain."""
    pred = fx.predictions(fit, cands).dropna(subset=["predicted", "flops"])
    if pred.empty or k < 1:
        return []
    pred = pred.assign(width=pred["high"] - pred["low"])
    skip = set(exclude)
    out: list[Genome] = []
    rest = pred
    while len(out) < k and not rest.empty:  # peel optimistic fronts until k are found
        on = pareto_mask(rest[["high", "flops"]].to_numpy(float), ["maximize", "minimize"])
        layer = rest[on].sort_values("width", ascending=False)
        fresh = [g for key, g in zip(layer["key"], layer["genome"]) if key not in skip]
        out += fresh[: k - len(out)]
        rest = rest[~on]
    if len(out) < k:  # every candidate already run: repeat the least certain front points
        layer = pred.sort_values("width", ascending=False)
        out += list(layer["genome"])[: k - len(out)]
    return out


def confirm(
    front: Sequence[Genome],
    designs: Sequence[Genome],
    done: Mapping[str, set[int]],
    seeds: Sequence[int],
) -> list[tuple[Genome, int]]:
    """(genome, seed) pairs for the next confirmation round: every genome of the model front and every
    published design gets the first seed of `seeds` that not all of them have run yet (blocked: the
    compared genomes share it). `done`: genome key -> seeds run. Empty when every seed is run."""
    genomes = list({g.key: g for g in [*designs, *front]}.values())  # designs first: a cut round keeps them
    for s in seeds:
        todo = [g for g in genomes if s not in done.get(g.key, set())]
        if todo:
            return [(g, s) for g in todo]
    return []


def unresolved(verdicts: pd.DataFrame) -> list[str]:
    """Designs whose model verdict is still open (effects.verdicts)."""
    if verdicts.empty:
        return []
    return [r.design for r in verdicts.itertuples() if str(r.verdict).startswith("not resolved")]


@dataclass
class Plan:
    """The designed strategy over one study's budget of `budget` trials.

    - screen: the first min(screen size, the budget less the confirmation share) trials, all under
      the study's seed;
    - then, in rounds of `batch`, proposals of the effects model fitted to every run so far (the
      study's and its references'); while the model cannot be fitted yet, the study's own sampler
      (random) fills the round;
    - the last `confirm` share of the budget: confirmation rounds, each giving the model front among
      the genomes run and the designs whose verdict is still open the next seed of `confirm_seeds`
      (blocked); when every one of them has run every seed, proposals again.
    Every batch is a list of (genome, seed) pairs; `next_batch` is a pure function of what the study
    holds, so a resumed study continues where it stopped. DesignedSampler asks it."""

    spec: object
    budget: int
    batch: int = 2
    seed: int = 0
    confirm: float = CONFIRM_SHARE
    designs: tuple = ()  # catalog designs inside the space
    confirm_seeds: tuple[int, ...] = ()  # default: seed+1 .. seed+EXTRA_SEEDS
    costs: object = None  # effects.StageCosts for the model front's candidates
    multiple: float = SCREEN_MULTIPLE
    screen_seed: int | None = None  # draws the screen (default: seed)
    _screen: list = field(default_factory=list, repr=False)

    def __post_init__(self):
        if not self.confirm_seeds:
            self.confirm_seeds = tuple(self.seed + i for i in range(1, EXTRA_SEEDS + 1))
        if self.screen_seed is None:
            self.screen_seed = self.seed

    @property
    def confirm_from(self) -> int:
        """The trial count from which confirmation rounds run."""
        return self.budget - round(self.confirm * self.budget)

    def screen(self) -> list[Genome]:
        if not self._screen:
            n = min(self.confirm_from, int(math.ceil(self.multiple * parameters(self.spec))))
            # a pool 50x the screen is plenty for the exchange, and keeps a large space's matrix small
            self._screen = screen(
                self.spec, max(n, 1), seed=self.screen_seed, pool_size=min(POOL, 50 * max(n, 1))
            )
        return self._screen

    def next_batch(self, runs: fx.Runs | None, asked: Mapping[str, set[int]], n_asked: int):
        """(phase, [(genome, seed)]): phase is "screen", "propose", "confirm", "sampler" (the model
        cannot be fitted yet: the study's sampler picks) or "done". `asked`: genome key -> seeds of
        every trial asked so far (finished, running or waiting); `n_asked`: how many of the budget."""
        left = self.budget - n_asked
        if left <= 0:
            return "done", []
        todo = [g for g in self.screen() if self.seed not in asked.get(g.key, set())]
        if todo and n_asked < len(self.screen()):  # resumed with a larger budget: only the difference
            return "screen", [(g, self.seed) for g in todo[: min(left, len(self.screen()) - n_asked)]]
        model = fit_or_none(runs)
        if model is None:
            return "sampler", []
        cands, _ = fx.candidates(model, runs, costs=self.costs)
        pred = fx.predictions(model, cands)
        if n_asked >= self.confirm_from:
            # replication of what was run: the model front among the genomes run so far (a front point
            # never run is a proposal's business; chasing new ones here would never repeat a seed)
            front = list(fx.model_front(pred[pred["evaluated"]])["genome"])
            verdicts = fx.verdicts(model, pred, runs, designs=self.designs)
            open_ = set(unresolved(verdicts))
            designs = [d.genome for d in self.designs if d.name in open_]
            pairs = confirm(front, designs, asked, self.confirm_seeds)
            if pairs:
                return "confirm", pairs[:left]
        genomes = propose(model, cands, min(self.batch, left), exclude=set(asked))
        return "propose", [(g, self.seed) for g in genomes]


RUN_COLUMNS = (
    "number", "study", "state", "status", "genome", "genome_key", "seed", "top1", "flops", "params",
    "reference", "recipe",
)  # fmt: skip  # what analysis.effects.runs_from_study reads of analysis.load_study's rows


class DesignedSampler(optuna.samplers.BaseSampler):
    """The designed strategy (`Plan`) as an Optuna sampler.

    A new trial takes the next (genome, seed) pair of the current batch; once the batch is used up the
    plan gives the next one from what the study holds then. The genome comes through
    `sample_independent`, parameter by parameter; the seed through `trial_seed(number)`, which
    studies.search.GenomeSpace stores as the trial's "trial_seed" user attr, where the trainable and
    the table backend read it (a sampler sees only frozen trials, so it cannot store an attr itself).
    A trial enqueued with its parameters (a seeded design, a requeued trial) never asks the sampler
    and takes nothing from the batch. While the model cannot be fitted yet, and past the budget, a
    random sampler answers.

    The study is read incrementally: each finished trial once, and only the running and waiting ones
    again at every batch. With `storage`, the study's references ('<name>.references') enter the
    model too, and a stored calibration gives its noise, as analysis.load_study would have them.
    """

    def __init__(self, plan: Plan, seed: int = 0, storage=None, log=None):
        self.plan = plan
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._storage = storage
        self._log = log or (lambda _line: None)
        self._batch: list[tuple[dict, int]] = []  # the current batch's pairs no trial has taken yet
        self._taken: dict[int, tuple[dict, int] | None] = {}  # trial number -> (params, seed); None: random
        self._sources: list[tuple[str, optuna.Study]] | None = None  # (kind, study): "search", "reference"
        self._calibration: dict | None = None
        self._read: set[tuple[str, int]] = set()  # (kind, number) of the finished trials read
        self._runs: list[dict] = []  # the completed runs read, as analysis.load_study's rows
        self._asked: dict[str, set[int]] = {}  # genome key -> seeds, over the finished trials read
        self._n_asked = 0  # of those, how many count towards the budget

    def infer_relative_search_space(self, study, trial) -> dict:
        return {}  # a whole genome is chosen per trial, answered parameter by parameter

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        pair = self._pair(study, trial.number)
        if pair is None or param_name not in pair[0]:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        return pair[0][param_name]

    def trial_seed(self, number: int) -> int | None:
        """The seed the plan gave trial `number` (None: the study's own)."""
        pair = self._taken.get(number)
        return pair[1] if pair else None

    def _pair(self, study, number: int) -> tuple[dict, int] | None:
        if number not in self._taken:
            if not self._batch:
                self._batch = self._next_batch(study, number)
            self._taken[number] = self._batch.pop(0) if self._batch else None
        return self._taken[number]

    def _next_batch(self, study, asking: int) -> list[tuple[dict, int]]:
        self._read_finished(study)
        asked = {k: set(v) for k, v in self._asked.items()}
        n_asked = self._n_asked
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            if t.number != asking:  # the trial being asked is not one of the asked before it
                n_asked += self._note(t, asked)
        phase, batch = self.plan.next_batch(self._runs_read(study), asked, n_asked)
        if batch:
            seeds = ", ".join(map(str, sorted({s for _, s in batch})))
            self._log(f"  designed: {phase} - {len(batch)} genome(s) planned (seed {seeds})")
        return [(space.to_params(g, self.plan.spec), int(s)) for g, s in batch]

    def _note(self, t, asked: dict[str, set[int]]) -> int:
        """Add a trial's genome and seed to `asked`; 1 when it counts towards the budget."""
        a = t.user_attrs
        genome = read_genome(a.get("genome"))
        key = a.get("genome_key") or (genome.key if genome is not None else None)
        if key:
            asked.setdefault(key, set()).add(int(a.get("trial_seed", a.get("seed", self.plan.seed))))
        return int(a.get("status") != Status.INFEASIBLE)  # never trained: not in the budget

    def _read_finished(self, study) -> None:
        if self._sources is None:
            self._sources = [("search", study)]
            if self._storage is not None:
                from analysis.calibration import load_calibration
                from analysis.load import REFERENCES_SUFFIX

                name = study.study_name + REFERENCES_SUFFIX
                if any(s.study_name == name for s in self._storage.get_all_studies()):
                    self._sources.append(
                        ("reference", optuna.load_study(study_name=name, storage=self._storage))
                    )
                self._calibration = load_calibration(self._storage, study.study_name)
        names = _objective_names(study)
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        for kind, source in self._sources:
            for t in source.get_trials(deepcopy=False, states=finished):
                if (kind, t.number) in self._read:
                    continue
                self._read.add((kind, t.number))
                if kind == "search" and t.state != TrialState.FAIL:  # a failed trial is retried: not asked
                    self._n_asked += self._note(t, self._asked)
                if t.state == TrialState.COMPLETE:
                    self._runs.append(_run_row(t, kind, names))

    def _runs_read(self, study) -> fx.Runs:
        df = pd.DataFrame(self._runs, columns=list(RUN_COLUMNS))
        ua = study.user_attrs
        df.attrs.update(
            study_name=study.study_name,
            config=ua.get("config") or {},
            target=ua.get("target") or {},
            fidelity=ua.get("fidelity") or {},
            calibration=self._calibration,
        )
        return study_effects.runs_from_study(df)


def _objective_names(study) -> list[str]:
    objectives = study.user_attrs.get("objectives")
    return (
        [o["name"] for o in objectives] if objectives else [f"value{i}" for i in range(len(study.directions))]
    )


def _run_row(t, kind: str, objective_names: Sequence[str]) -> dict:
    """A completed trial as analysis.load_study's row (the columns the effects model reads): the
    objectives from the trial's values, the rest from its user attrs."""
    a = t.user_attrs
    row = {c: a.get(c) for c in RUN_COLUMNS}
    row.update(number=t.number, study=kind, state=t.state.name, status=a.get("status") or Status.OK)
    row.update(zip(objective_names, t.values or ()))
    return row


def fit_or_none(runs: fx.Runs | None) -> fx.Fit | None:
    """The effects model of the runs, or None while they are too few for it."""
    if runs is None or runs.n < 3:
        return None
    try:
        return fx.fit(runs)
    except UserError:
        return None
