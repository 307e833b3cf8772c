"""Ray Tune's OptunaSearch, adapted: define-by-run genomes, honest trial states, user attrs.

What a finished Ray trial becomes in Optuna (the driver is the only writer):
- trained to the full epoch count, status "ok"       -> COMPLETE with the objective values
- "diverged" (non-finite loss)                       -> COMPLETE with top1 = chance level
  (1 / classes): a real, bad outcome of that network under the protocol, so the sampler learns
  to avoid it; user attr status = "diverged" lets analysis drop it from a front.
- stopped early by ASHA, or trainer "stopped"        -> PRUNED (Ray would say COMPLETE with the
  partial accuracy; a partial accuracy must not enter the front), status = "pruned"
- raised an exception, or the worker died            -> FAIL, user attr "error", status "error"
- "oom"                                              -> FAIL, status "oom" (not the network's fault)
- outside the study's [constraints] (its cost, known before training, is over a limit)
                                                     -> COMPLETE at top1 = 0 with its costs and
  violated Optuna constraints (trial.set_constraint), status "infeasible", never trained: the
  sampler learns the region is out of bounds, and Optuna's best_trials leaves it out of the front.
  It does not use a Ray sample (the searcher asks again), nor count towards budget.trials.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from analysis import metrics
from searchspace import catalog
from searchspace.errors import redact
from trainers.record import FAILED, Status, TrialRecord

from .config import SAMPLERS
from .costs import target_cost
from .designed import DesignedSampler, Plan
from .storage import StorageWriteError

# Storage URLs with a password, by their redacted form: Ray pickles the searcher into the run folder
# (ray/*/tuner.pkl), so a pickle carries the redacted URL and the copy in this process finds the
# password here again. The password never reaches a file.
_PASSWORDS: dict[str, str] = {}

# Copied from the final result to the trial's user attrs (plus genome, fidelity, reference, ...), after
# every metric of analysis.metrics (result_attrs()).
RESULT_ATTRS = TrialRecord.attrs()


class GenomeSpace:
    """The define-by-run space: searchspace.space.suggest, plus what the trainable needs.

    A class (not a closure) so that Ray can pickle the searcher with it.
    """

    def __init__(
        self, spec, driver: str | None = None, target: dict | None = None, reference_recipe: str = "common"
    ):
        self.spec = spec
        self.driver = driver  # studies.storage.Heartbeat.id: which driver runs the trial (for recover)
        self.target = target  # counted here, once per genome (studies.costs), not in the GPU trial
        self.reference_recipe = reference_recipe  # [references] recipe: "common" | "authors"

    def __call__(self, trial) -> dict:
        return self.ask(trial)[1]

    def ask(self, trial):
        """(the Genome, the Ray trial config): the searcher keeps using the object, the worker gets the JSON."""
        from searchspace import space

        if self.driver:
            trial.set_user_attr("driver", self.driver)
        genome = space.suggest(trial, self.spec)
        text = genome.to_json()
        trial.set_user_attr("genome", text)  # visible in the dashboard while the trial runs
        config = {"genome": text, "trial_number": trial.number}
        if self.target:
            try:
                config["cost"] = target_cost(genome, self.target)
            except Exception:  # the trial counts it again and reports the error as its own
                pass
        seed = trial.user_attrs.get("trial_seed")  # set at enqueue (studies.calibrate: repeated seeds)
        if seed is None:  # or chosen by the sampler (studies.designed: confirmation seeds), stored here
            seed = getattr(trial.study.sampler, "trial_seed", lambda _number: None)(trial.number)
            if seed is not None:
                trial.set_user_attr("trial_seed", seed)
        if seed is not None:
            config["seed"] = seed
        recipe = trial_recipe(trial.user_attrs.get("reference"), self.reference_recipe)
        label = recipe_label(recipe)
        trial.set_user_attr("recipe", label)
        if label != "common":
            config["recipe"] = recipe.to_dict()
        return genome, config


def trial_recipe(reference: str | None, choice: str):
    """The searchspace.Recipe a trial trains with: a reference design (user attr "reference", set
    at enqueue) under [references] recipe = "authors" gets its authors' recipe; everything else,
    searched genomes always, the common one."""
    from searchspace import catalog
    from searchspace.recipe import Recipe, reference_recipe

    if not reference:
        return Recipe()
    try:
        design = catalog.get(reference)
    except Exception:  # a reference name the catalog no longer has: train it as a genome
        return Recipe()
    return reference_recipe(design.recipe, choice)


def recipe_label(recipe) -> str:
    """The trial's "recipe" user attr: "common", or "authors: <the fields that differ>"."""
    text = recipe.describe()
    return text if text == "common" else f"authors: {text}"


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler's description, not the sampler. Ray pickles the searcher, and a live sampler may hold
    what does not pickle (Optuna 5.1's genetic samplers keep a threading.Lock): the searcher keeps
    this and builds the sampler in the process that asks.

    `plan` (a studies.designed.Plan: the space, trial budget, batch size, confirmation share, designs
    in the space and stage costs) is the study as a sampler that plans the whole budget sees it; the
    driver gives it to every sampler, and those that choose trial by trial ignore it."""

    name: str = "nsga2"
    seed: int = 0
    population: int = 16
    plan: object = field(default=None, compare=False)

    @classmethod
    def of_study(cls, cfg, n_existing: int = 0, costs=None) -> SamplerSpec:
        """The config's [sampler], seeded with seed + trials so far (a resumed sampler does not replay
        the first run's draws), with the study's plan (`costs`: a StageCosts of the study's target)."""
        plan = Plan(
            cfg.space,
            cfg.budget.trials,
            batch=max(cfg.budget.concurrency, 2),
            seed=cfg.seed,
            confirm=cfg.budget.confirm,
            designs=tuple(catalog.inside(cfg.space)),
            costs=costs,
        )
        return cls(cfg.sampler.name, cfg.seed + n_existing, cfg.sampler.population, plan)

    def build(self, storage=None, log: Callable[[str], None] | None = None) -> optuna.samplers.BaseSampler:
        """The sampler; `storage` (where the study lives) and `log` serve samplers that read beyond
        the study's own trials or say what they plan (designed)."""
        if self.name == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=self.population, seed=self.seed)
        if self.name == "tpe":  # constant_liar: concurrent trials do not all go to the same spot
            return optuna.samplers.TPESampler(
                seed=self.seed, constant_liar=True, multivariate=True, group=True
            )
        if self.name == "gp":  # multi-objective (log EHVI) and constrained where trials carry constraints
            return optuna.samplers.GPSampler(seed=self.seed, n_startup_trials=self.population)
        if self.name == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        if self.name == "designed":
            if self.plan is None:
                raise ValueError("the designed sampler needs the study's plan (SamplerSpec.plan)")
            return DesignedSampler(self.plan, seed=self.seed, storage=storage, log=log)
        raise ValueError(f"unknown sampler {self.name!r} (known: {', '.join(SAMPLERS)})")


@dataclass(frozen=True)
class CostLimits:
    """[constraints] resolved to numbers: upper limits on the full-size costs of a genome at the study's
    target. A genome's costs are exact before training (searchspace.cost), so the limit is checked in
    the driver before a genome is handed to Ray."""

    limits: tuple[tuple[str, float], ...]  # (("flops", 4.52e9), ("params", 3e7)): cost name, maximum
    target: tuple[tuple[str, object], ...]  # convention, resolution, num_classes

    def cost(self, genome) -> dict:
        """{"flops", "params", "activations"} of the Genome at the study's target (studies.costs' cache)."""
        return target_cost(genome, dict(self.target))

    def violations(self, cost: dict) -> dict[str, float]:
        """Per limit: cost / maximum - 1 (Optuna's convention: <= 0 is feasible; relative, so the samplers
        see flops and params on one scale)."""
        return {name: cost[name] / top - 1.0 for name, top in self.limits}


class StudySearch(Searcher):
    """A Ray Tune searcher that asks and tells an Optuna study through Optuna's public API.

    It keeps descriptions (study name, storage, sampler spec) and rebuilds the study handle and its
    sampler on first use, so pickling it (Ray does, when it builds the Tuner) never touches a live
    sampler. The Optuna storage, not this object, is the checkpoint: resume reads it
    (studies.storage.recover).
    """

    progress = None  # a studies.session.Progress, set by the driver: counts asked and finished trials

    def __init__(
        self,
        space: GenomeSpace,
        objectives: list[dict],
        study_name: str,
        storage,
        sampler: SamplerSpec,
        epochs: int,
        attrs: dict,
        log: Callable[[str], None] = print,
        limits: CostLimits | None = None,
        max_skips: int = 50,
    ):
        super().__init__(
            metric=[o["name"] for o in objectives],
            mode=["max" if o["direction"] == "maximize" else "min" for o in objectives],
        )
        self.space = space
        self.objectives = objectives
        self.study_name = study_name
        self.storage = storage  # a journal path or RDB URL (reopened after a pickle), or a storage object
        self.sampler = sampler
        self._epochs = epochs
        self._attrs = attrs  # constant per study: fidelity, seed, reference default
        self._log = log
        self._study: optuna.Study | None = None
        self._storage: optuna.storages.BaseStorage | None = None
        self._asked: dict[
            str, tuple[int, str | None]
        ] = {}  # Ray trial id -> (trial number, reference), until told
        self._last: dict[str, dict] = {}
        self.finished: list[int] = []
        self.limits = limits
        self.max_skips = max_skips  # infeasible draws in a row before the searcher gives up
        self.skipped: list[int] = []  # trial numbers recorded infeasible, never trained
        # A failed storage write (full disk): no new trial is asked, the driver ends with this error, and
        # trials not told stay RUNNING, to be requeued when the run resumes.
        self.write_error: StorageWriteError | None = None

    def __getstate__(self) -> dict:
        state = {**self.__dict__, "_study": None, "_storage": None}
        if isinstance(self.storage, str) and redact(self.storage) != self.storage:
            _PASSWORDS[redact(self.storage)] = self.storage
            state["storage"] = redact(self.storage)
        return state

    def storage_url(self):
        """The storage as given (a pickled copy's redacted URL resolved again), or a storage object."""
        return _PASSWORDS.get(self.storage, self.storage) if isinstance(self.storage, str) else self.storage

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            from .storage import open_or_create

            url = self.storage_url()
            self._storage = open_or_create(url) if isinstance(url, str) else url
            self._study = optuna.load_study(
                study_name=self.study_name,
                storage=self._storage,
                sampler=self.sampler.build(self._storage, self._log),
            )
        return self._study

    @property
    def opened_storage(self) -> optuna.storages.BaseStorage:
        """The storage the study is asked and told through (opened on first use)."""
        _ = self.study  # opening the study opens its storage
        return self._storage

    def with_storage(self, storage: optuna.storages.BaseStorage) -> StudySearch:
        """This searcher (space, objectives, sampler, limits, progress) asking and telling the study
        of the same name in `storage` instead, with nothing asked or finished yet: e.g. an in-memory
        mirror of the study (studies.table_backend)."""
        twin = copy.copy(self)
        twin.storage, twin._study, twin._storage = storage, None, None
        twin._asked, twin._last, twin.finished, twin.skipped = {}, {}, [], []
        return twin

    def set_trial_attrs(self, number: int, attrs: dict) -> None:
        """Set user attrs of trial `number` (also of a finished trial: the searcher's record of it)."""
        # BaseStorage's public interface: a trial is addressed by (study id, trial number).
        storage = self.opened_storage
        tid = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(self.study_name), number
        )
        for k, v in attrs.items():
            storage.set_trial_user_attr(tid, k, v)

    def suggest(self, trial_id: str) -> dict | None:
        if self.write_error is not None:
            return Searcher.FINISHED
        try:
            return self._suggest(trial_id)
        except StorageWriteError as e:
            self._stop_writing(e)
            return Searcher.FINISHED

    def _stop_writing(self, e: StorageWriteError) -> None:
        if self.write_error is None:
            self.write_error = e
            self._log(f"  storage write failed: no new trials are started ({e})")

    def _suggest(self, trial_id: str) -> dict | None:
        # An infeasible genome is recorded and a new one asked here, so that every Ray sample trains
        # one genome and Ray's num_samples stays the number of trained trials.
        for _ in range(self.max_skips + 1):
            trial = self.study.ask()
            genome, config = self.space.ask(trial)
            if self.limits is None or self._feasible(trial, genome):
                self._asked[trial_id] = (
                    trial.number,
                    trial.user_attrs.get("reference") or trial.user_attrs.get("design"),
                )
                if self.progress is not None:
                    self.progress.started(trial_id)
                return config
        self._log(
            f"  {self.max_skips + 1} genomes in a row outside [constraints]: the search stops here "
            "(loosen the limits or narrow [space])"
        )
        return Searcher.FINISHED

    def _feasible(self, trial: optuna.Trial, genome) -> bool:
        """Set the trial's Optuna constraints from its costs; an infeasible one is told now (see the
        module docstring) and False returned."""
        try:  # read from studies.costs' cache when the space has just counted it at this target
            cost = self.limits.cost(genome)
        except Exception as e:  # a genome the cost model cannot build: let the trainable report it
            self._log(f"  trial {trial.number}: cost unknown before training ({type(e).__name__}: {e})")
            return True
        over = self.limits.violations(cost)
        for name, v in over.items():
            trial.set_constraint(name, v)
        if all(v <= 0 for v in over.values()):
            return True
        r = {
            "genome_key": genome.key,
            **{n: cost[n] for n in metrics.names("cost")},
            "top1": 0.0,
            "epochs_completed": 0,
            "status": Status.INFEASIBLE,
            "error": "over " + ", ".join(f"{n}_max by {v:+.1%}" for n, v in over.items() if v > 0),
        }
        # Never trained: top1 0 (the worst), the exact costs, and latency unknown (the worst too).
        values = [
            r.get(o["name"], 0.0 if o["direction"] == "maximize" else math.inf) for o in self.objectives
        ]
        self.set_trial_attrs(trial.number, {**self._attrs, **r})
        self.study.tell(trial.number, values, state=TrialState.COMPLETE)
        self.skipped.append(trial.number)
        self._log(
            _line(trial.number, None, r, TrialState.COMPLETE, values, self.objectives) + " " + r["error"]
        )
        return False

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._last[trial_id] = result  # an errored trial's complete call carries no result
        if trial_id in self._asked and not result.get("final"):  # progress for the dashboard
            try:
                self.set_trial_attrs(
                    self._asked[trial_id][0],
                    {k: result[k] for k in ("epochs_completed", "top1", "node") if result.get(k) is not None},
                )
            except StorageWriteError as e:
                self._stop_writing(e)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._asked:
            return
        number, reference = self._asked.pop(trial_id)
        r = _nested({**self._last.pop(trial_id, {}), **(result or {})})
        state, values = self._outcome(r, error)
        try:
            self.set_trial_attrs(number, {**self._attrs, **{k: r[k] for k in result_attrs() if k in r}})
            self.study.tell(number, values, state=state)
        except StorageWriteError as e:  # left RUNNING: requeued on resume, not counted as a failure
            self._stop_writing(e)
            self._log(
                f"  trial {number}: its result could not be stored; it runs again when the study resumes"
            )
            return
        except Exception as e:  # never lose the study over one trial
            try:
                self.study.tell(number, None, state=TrialState.FAIL)
                self._log(f"  trial {number}: could not tell Optuna ({e}); marked FAIL")
            except Exception as e2:  # the storage itself is failing: log it, keep the run going
                self._log(
                    f"  trial {number}: could not tell Optuna ({e}) nor mark it FAIL ({e2}); left as is"
                )
        self.finished.append(number)
        line = _line(number, reference, r, state, values, self.objectives)
        if self.progress is not None:  # the line, with the study's count and ETA
            self.progress.finished(trial_id, state, line, r.get("wall_s"))
        else:
            self._log(line)

    def _outcome(self, r: dict, error: bool) -> tuple[TrialState, list | None]:
        """The Optuna state and values of a finished Ray trial (see the module docstring); sets r["status"]."""
        status = r.get("status")
        if error and status != Status.ERROR:
            status, r["error"] = (
                Status.ERROR,
                r.get("error") or "the Ray trial failed without reporting (worker died?)",
            )
        values = None
        if status in FAILED:
            state = TrialState.FAIL
        elif (
            not r.get("final")
            or status == Status.STOPPED  # "diverged" stops early by design: not pruned
            or (status != Status.DIVERGED and r.get("epochs_completed", 0) < self._epochs)
        ):
            state, status = TrialState.PRUNED, Status.PRUNED
        else:
            values = [r.get(o["name"]) for o in self.objectives]
            state = TrialState.COMPLETE if None not in values else TrialState.FAIL
            if state == TrialState.FAIL:
                status, r["error"], values = Status.ERROR, f"missing objective values {values}", None
        r["status"] = status
        return state, values

    def save(self, checkpoint_path: str) -> None:
        pass  # the Optuna storage is the checkpoint

    def restore(self, checkpoint_path: str) -> None:
        pass


def _line(number, reference, r, state, values, objectives) -> str:
    what = ", ".join(f"{o['name']}={metrics.fmt(o['name'], v)}" for o, v in zip(objectives, values or []))
    ref = f" [{reference}]" if reference else ""
    err = f" {r.get('error')}" if state == TrialState.FAIL else ""
    return (
        f"  trial {number:>3}{ref} {state.name.lower():8} {r.get('status', ''):8} {what}"
        f" epochs={r.get('epochs_completed', 0)} {r.get('wall_s', 0) or 0:.1f}s{err}"
    )


def result_attrs() -> tuple[str, ...]:
    """The result keys stored as user attrs: every metric in the table, then RESULT_ATTRS."""
    return (*metrics.names(), *RESULT_ATTRS)


def _nested(result: dict) -> dict:
    """Ray Tune flattens a reported dict ("environment": {...} arrives as "environment/torch", ...):
    put the record's dict-valued fields back together."""
    out = {k: v for k, v in result.items() if "/" not in k}
    for k, v in result.items():
        if "/" in k:
            head, tail = k.split("/", 1)
            out.setdefault(head, {})[tail] = v
    return out
