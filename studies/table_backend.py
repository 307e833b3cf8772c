"""The table backend: a study's trials answered from a benchmark table, in process, on a simulated clock.

`python -m studies.run NAME --backend table[:PATH]` runs the study as usual (same searcher class
StudySearch, same Optuna storage, report and dashboard) but, instead of Ray Tune training each
trial, `tune()` below looks the asked genome up in the table (studies.table), draws one of its
seeds (a seeded RNG per trial number), and replays its per-epoch top-1/top-5 through the searcher
and the early-stopping rule, advancing a simulated clock by the recorded wall time (each epoch
takes an equal share of the trial's wall time). `concurrency` trials are in flight at once, as
Ray Tune would run them, so the rule sees results in the same interleaved order as in real
training. Each trial stores its simulated start/end (user attrs sim_start_s / sim_end_s) and its
wall_s (the recorded one, or the stopped share of it), so hypervolume against compute works.

Early stopping is a rule of studies.asha, asked directly: the same rule code the Ray backend runs
inside its scheduler (any object with `on_result(trial_id, epoch, metrics) -> "continue" | "stop"`
and optionally `on_complete(trial_id)` serves).
"""

from __future__ import annotations

import heapq
import random
from pathlib import Path

from analysis import metrics as metric_table
from searchspace.errors import UserError
from trainers.environment import FIELDS as ENV_FIELDS
from trainers.record import Status

from .asha import STOP, NoStopping, StoppingRule, stopping_rule


class TableBackend:
    """Answers trials of a study from a studies.table.Table (see the module docstring); a
    studies.session.Backend like studies.ray_backend.RayBackend."""

    name = "table"

    def __init__(
        self,
        table,
        cfg,
        rule: StoppingRule | None = None,
        seed: int | None = None,
        on_missing: str = "error",
        max_skips: int | None = None,
    ):
        self.table, self.cfg = table, cfg
        self.rule = rule if rule is not None else stopping_rule(cfg)
        self.seed = cfg.seed if seed is None else seed
        self.on_missing = on_missing  # "error" | "skip" (a partial table: tell FAIL, ask again, not counted)
        self.convention = cfg.target.convention
        if f"flops_{self.convention}" not in next(iter(table.rows.values()))[0]:
            raise UserError(f"table {str(table.path)!r} has no costs under convention {self.convention!r}")
        self.clock = 0.0  # simulated seconds since the study's first table trial
        self.skipped = 0
        self.max_skips = (
            max_skips  # on_missing="skip": give up after this many (default 20 per trial asked for)
        )

    @classmethod
    def open(cls, path: str | Path, cfg, **kw) -> TableBackend:
        from .table import Table

        return cls(Table.load(path, cfg), cfg, **kw)

    def resources(self, cfg) -> dict:
        conc = cfg.budget.concurrency or 1
        return {
            "cpu": 0.0,
            "gpu": 0.0,
            "concurrency": conc,
            "device": "table",
            "cluster": {"CPU": 0, "GPU": 0},
            "nodes": 0,
        }

    def start(self) -> None:
        """Nothing to start: the trials are answered in this process."""

    def close(self) -> None:
        """Nothing to shut down."""

    def prepare(self, study) -> None:
        """A resumed study's simulated clock goes on from its last trial's end."""
        ends = [t.user_attrs.get("sim_end_s") for t in study.get_trials(deepcopy=False)]
        self.clock = max([self.clock, *(e for e in ends if e is not None)])

    def describe(self, res: dict) -> str:
        return (
            f"table backend: {len(self.table.rows)} genomes of table {self.table.name!r} "
            f"({self.table.path}); up to {res['concurrency']} simulated trials at a time"
        )

    def tune(
        self,
        cfg,
        res,
        search,
        n: int,
        run_dir=None,
        tag: str = "",
        log=None,
        ctx_overrides=None,
        early_stop: bool = True,
        stop=None,
    ) -> None:
        """Run on an in-memory mirror of the study, then write each new trial to the study's storage in
        one operation: a journal file syncs every write (about 30 per trial through the searcher),
        which alone would cost over 50 ms per simulated trial. Trials finished before an error are
        written too; an interrupted run writes nothing and a rerun redoes it."""
        import optuna

        real = search.study
        storage, before = search.opened_storage, real.get_trials(deepcopy=False)
        mem = optuna.storages.InMemoryStorage()
        mirror = optuna.create_study(study_name=real.study_name, storage=mem, directions=real.directions)
        mem_id = mem.get_study_id_from_name(real.study_name)
        for k, v in real.user_attrs.items():
            mirror.set_user_attr(k, v)
        for t in before:
            mem.create_new_trial(mem_id, template_trial=t)
        local = search.with_storage(mem)
        try:
            self.run(
                local, n, res["concurrency"], rule=None if early_stop else NoStopping(), stop=stop
            )  # references in full
        finally:
            _flush(
                storage,
                storage.get_study_id_from_name(real.study_name),
                before,
                mirror.get_trials(deepcopy=False),
            )
            search.finished.extend(local.finished)
            search.skipped.extend(local.skipped)

    def run(
        self, search, n: int, concurrency: int = 1, rule: StoppingRule | None = None, stop=None
    ) -> list[int]:
        """Run `n` trials through `search` (a StudySearch); returns the trial numbers told. A
        studies.session.StopWhen `stop` (a signal, the wall-clock budget) ends the asking; simulated
        trials already started take no real time and finish."""
        from searchspace import Genome

        rule = self.rule if rule is None else rule
        epochs = self.table.epochs
        events: list = []  # (time, order, trial id, epoch)
        running: dict = {}  # trial id -> (row, start time, trial number)
        counter = 0
        started = 0
        numbers = []
        asks = 0

        def start(now: float) -> bool:
            nonlocal counter, started, asks
            if stop is not None and stop.should_stop():
                return False
            while True:
                asks += 1
                if self.skipped > (self.max_skips if self.max_skips is not None else 20 * n + 100):
                    raise UserError(
                        f"table {str(self.table.path)!r}: the sampler keeps asking for genomes the table "
                        f"does not hold ({self.skipped} skipped); the table has {len(self.table.rows)} genomes"
                    )
                counter += 1
                tid = f"table_{self.clock:.3f}_{counter}"
                config = search.suggest(tid)
                if config is None or isinstance(config, str):  # Searcher.FINISHED: too many infeasible draws
                    return False
                genome = Genome.from_json(config["genome"])
                rows = self.table.rows.get(genome.key)
                if rows is not None:
                    break
                why = (
                    f"genome {genome.key} is not in table {str(self.table.path)!r} (table {self.table.name!r}: "
                    f"{len(self.table.rows)} genomes of the space of studies/configs/{self.table.name}.toml)"
                )
                search.on_trial_complete(
                    tid, {"status": Status.ERROR, "error": why, "final": True}, error=True
                )  # FAIL
                if self.on_missing != "skip":
                    raise UserError(
                        why + "; run the study on the table's own space, or extend the table "
                        "(python -m studies.table build)"
                    )
                self.skipped += 1
            number = config["trial_number"]
            if config.get("seed") is not None:  # a trial given its seed (studies.designed: blocked seeds)
                rows = [r for r in rows if r["seed"] == config["seed"]] or rows
            row = random.Random(f"{self.seed}:{number}").choice(rows)  # the seed drawn for this trial
            running[tid] = (row, now, number)
            started += 1
            heapq.heappush(events, (now + row["wall_s"] / epochs, counter, tid, 1))
            return True

        while started < n and len(running) < concurrency and start(self.clock):
            pass
        while events:
            t, order, tid, epoch = heapq.heappop(events)
            self.clock = t
            row, t0, number = running[tid]
            metrics = self._metrics(row, epoch, epochs)
            final = epoch == epochs
            decision = rule.on_result(tid, epoch, metrics)
            if not final and decision != STOP:
                search.on_trial_result(tid, metrics)
                heapq.heappush(events, (t + row["wall_s"] / epochs, order, tid, epoch + 1))
                continue
            # a finished trial's attrs cannot change: the simulated times go in before it is told
            search.set_trial_attrs(
                number,
                {"sim_start_s": t0, "sim_end_s": t, "table": self.table.name, "table_seed": row["seed"]},
            )
            if final:
                search.on_trial_complete(
                    tid,
                    {**metrics, "final": True, "status": row.get("status") or Status.OK, "top1": row["top1"]},
                )
            else:
                search.on_trial_result(tid, metrics)
                search.on_trial_complete(tid, metrics)  # no final record: PRUNED (studies.search)
            if hasattr(rule, "on_complete"):
                rule.on_complete(tid)
            del running[tid]
            numbers.append(number)
            while started < n and len(running) < concurrency and start(self.clock):
                pass
        return numbers

    def _metrics(self, row: dict, epoch: int, epochs: int) -> dict:
        c = self.convention
        # a table holds costs and top-1/top-5 curves; nothing measured after training (latency) is in it
        return {
            "epochs_completed": epoch,
            "top1": row["top1_curve"][epoch - 1],
            "top5": row["top5_curve"][epoch - 1],
            **{m: row.get(f"{m}_{c}") for m in metric_table.names("cost")},
            **{m: None for m in metric_table.names("train") if m in metric_table.OBJECTIVES},
            "wall_s": row["wall_s"] * epoch / epochs,
            "train_s": row["train_s"] * epoch / epochs,
            "genome_key": row["genome_key"],
            "seed": row["seed"],
            "device": f"table:{row.get('device', '')}",
            "node": "table",
            # a replay is the row's measurement, made where the row was (rows before issue 31: unrecorded)
            "environment": {"key": row["environment"], **{k: row[k] for k in ENV_FIELDS if row.get(k)}}
            if row.get("environment")
            else None,
        }


def _flush(storage, study_id: int, before: list, after: list) -> None:
    """Write the mirror's new or changed trials to `storage` (trial numbers follow creation order)."""
    from optuna.trial import TrialState

    old = {t.number: t for t in before}
    for t in after:
        if t.number not in old:
            storage.create_new_trial(study_id, template_trial=t)
        elif old[t.number].state == TrialState.WAITING and t.state != TrialState.WAITING:
            # an enqueued trial (a requeued one, a reference design): fill the waiting trial in
            tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_state_values(tid, TrialState.RUNNING)
            for k, v in t.params.items():
                storage.set_trial_param(tid, k, t.distributions[k].to_internal_repr(v), t.distributions[k])
            for k, v in t.user_attrs.items():
                storage.set_trial_user_attr(tid, k, v)
            if t.state != TrialState.RUNNING:
                storage.set_trial_state_values(tid, t.state, t.values)
