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
"""

from __future__ import annotations

from typing import Callable

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

# Copied from the final result to the trial's user attrs (plus genome, fidelity, reference, ...).
RESULT_ATTRS = ("genome_key", "params", "flops", "activations", "top1", "top5", "loss", "latency_ms",
                "epochs_completed", "status", "wall_s", "train_s", "images_per_s", "device", "seed", "node",
                "peak_mem_mb", "error", "traceback", "warmup_s", "compiled_graphs", "deterministic_requested", "deterministic",
                "nondeterministic_ops", "data_on_device", "gpus_per_trial", "memory_fraction")


class GenomeSpace:
    """The define-by-run space: searchspace.space.suggest, plus what the trainable needs.

    A class (not a closure) so that Ray can pickle the searcher with it.
    """

    def __init__(self, spec, driver: str | None = None, target: dict | None = None):
        self.spec = spec
        self.driver = driver  # studies.storage.Heartbeat.id: which driver runs the trial (for recover)
        self.target = target  # counted here, once per genome (studies.costs), not in the GPU trial

    def __call__(self, trial) -> dict:
        from searchspace import space

        if self.driver:
            trial.set_user_attr("driver", self.driver)
        genome = space.suggest(trial, self.spec)
        text = genome.to_json()
        trial.set_user_attr("genome", text)  # visible in the dashboard while the trial runs
        config = {"genome": text, "trial_number": trial.number}
        if self.target:
            from .costs import target_cost

            try:
                config["cost"] = target_cost(genome, self.target)
            except Exception:  # the trial counts it again and reports the error as its own
                pass
        return config


def make_sampler(name: str, seed: int, population: int) -> optuna.samplers.BaseSampler:
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if name == "tpe":  # constant_liar: concurrent trials do not all go to the same spot
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True, group=True)
    return optuna.samplers.RandomSampler(seed=seed)


class StudySearch(OptunaSearch):
    def __init__(self, space: GenomeSpace, objectives: list[dict], study_name: str, storage, sampler,
                 epochs: int, attrs: dict, log: Callable[[str], None] = print):
        super().__init__(space, metric=[o["name"] for o in objectives],
                         mode=["max" if o["direction"] == "maximize" else "min" for o in objectives],
                         sampler=sampler, study_name=study_name, storage=storage)
        self._objectives = objectives
        self._epochs = epochs
        self._attrs = attrs  # constant per study: fidelity, seed, reference default
        self._last: dict[str, dict] = {}
        self._log = log
        self.finished: list[int] = []

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def on_trial_result(self, trial_id: str, result: dict):
        self._last[trial_id] = result  # an errored trial's complete call carries no result
        ot = self._ot_trials.get(trial_id)
        if ot is not None and not result.get("final"):  # progress for the dashboard
            for k in ("epochs_completed", "top1", "node"):
                if result.get(k) is not None:
                    ot.set_user_attr(k, result[k])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot = self._ot_trials[trial_id]
        r = {**self._last.pop(trial_id, {}), **(result or {})}
        status = r.get("status")
        if error and status != "error":
            status, r["error"] = "error", r.get("error") or "the Ray trial failed without reporting (worker died?)"
        values = None
        if status in ("error", "oom"):
            state = TrialState.FAIL
        elif (not r.get("final") or status == "stopped"  # "diverged" stops early by design: not pruned
              or (status != "diverged" and r.get("epochs_completed", 0) < self._epochs)):
            state, status = TrialState.PRUNED, "pruned"
        else:
            values = [r.get(o["name"]) for o in self._objectives]
            state = TrialState.COMPLETE if None not in values else TrialState.FAIL
            if state == TrialState.FAIL:
                status, r["error"], values = "error", f"missing objective values {values}", None
        r["status"] = status
        for k, v in self._attrs.items():
            ot.set_user_attr(k, v)
        for k in RESULT_ATTRS:
            if k in r:
                ot.set_user_attr(k, r[k])
        try:
            self._ot_study.tell(ot, values, state=state)
        except Exception as e:  # never lose the study over one trial
            try:
                self._ot_study.tell(ot, None, state=TrialState.FAIL)
                self._log(f"  trial {ot.number}: could not tell Optuna ({e}); marked FAIL")
            except Exception as e2:  # the storage itself is failing: log it, keep the run going
                self._log(f"  trial {ot.number}: could not tell Optuna ({e}) nor mark it FAIL ({e2}); left as is")
        self._completed_trials.add(trial_id)
        self.finished.append(ot.number)
        self._log(_line(ot, r, state, values, self._objectives))

    def save(self, checkpoint_path: str):
        pass  # the Optuna storage is the checkpoint; resume reads it (studies.storage.recover)

    def restore(self, checkpoint_path: str):
        pass


def _line(ot, r, state, values, objectives) -> str:
    what = ", ".join(f"{o['name']}={_fmt(o['name'], v)}" for o, v in zip(objectives, values or []))
    ref = f" [{ot.user_attrs.get('reference')}]" if ot.user_attrs.get("reference") else ""
    err = f" {r.get('error')}" if state == TrialState.FAIL else ""
    return (f"  trial {ot.number:>3}{ref} {state.name.lower():8} {r.get('status', ''):8} {what}"
            f" epochs={r.get('epochs_completed', 0)} {r.get('wall_s', 0) or 0:.1f}s{err}")


def _fmt(name, v):
    if v is None:
        return "-"
    if name in ("flops", "activations"):
        return f"{v / 1e9:.2f}G"
    if name == "params":
        return f"{v / 1e6:.2f}M"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


