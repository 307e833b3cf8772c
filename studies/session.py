"""A study session: one driver's hold on a study storage, and the one way to run trials through it.

Every program that runs trials (studies.run, studies.table build, studies.calibrate, the fidelity
ladder) does the same things in the same order, so it does them here:

    with Session(url, run_dir, backend, stop) as session:   # lock, journal check, storage
        study = session.open(name, directions)               # create or load
        record_config(study, cfg)                            # what the study was run with
        session.recover(study)                               # a dead driver's trials requeued
        session.start(cfg)                                   # backend, signals, heartbeat
        search = StudySearch(GenomeSpace(cfg.space, session.driver_id), ...)
        session.run(cfg, search, n, "search")                # the backend trains n trials
    session.stopped                                          # trials a signal stopped, requeued
(`session.finish()` does the closing early, when a program writes its report inside the lock.)

A backend is studies.ray_backend.RayBackend or studies.table_backend.TableBackend (the interface is
`Backend` below); it is chosen once, where the command line is read.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Protocol

import optuna
from optuna.trial import TrialState

from . import config as config_mod
from . import storage as st

# -- stop signals and the time budget --------------------------------------------------------------
# When a study run ends before its trial budget: a wall-clock budget or a signal.
#
# `[budget] minutes` (or `--minutes`) and Ctrl-C / SIGTERM all end a run the same way: the driver asks
# for no new trial, stops the trials still training (each is marked FAIL with status "interrupted" and
# its genome requeued, exactly as a resume would do it, so it is never counted nor taken for a
# finished trial on a front), writes the report and prints the summary. Running trials are stopped,
# not finished, so that the budget bounds the run: one KernelWarehouse-heavy trial alone can train for
# minutes. A signal then gives exit status 128 + its number (SIGINT 130, SIGTERM 143); a second signal
# stops at once, without the summary.
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The signals caught in this process, kept at module level: Ray may pickle and copy the objects that
# carry a StopWhen (the searcher, the stopper), and every copy in the driver process must see them.
_received: list[int] = []


class StopWhen:
    """The conditions that end a run early: a deadline (minutes from now) and the first signal seen."""

    def __init__(self, minutes: float | None = None, clock=time.monotonic):
        self.minutes = minutes
        self.clock = clock
        self.deadline = None if minutes is None else clock() + 60.0 * minutes

    @property
    def signum(self) -> int | None:
        """The first signal caught since install(), or None."""
        return _received[0] if _received else None

    def install(self) -> StopWhen:
        """Catch SIGINT and SIGTERM from now on (again after ray.init, which sets its own SIGTERM handler)."""
        for sig in SIGNALS:
            signal.signal(sig, _on_signal)
        return self

    def reset(self) -> StopWhen:
        """Forget the signals caught so far (a new run in the same process)."""
        _received.clear()
        return self

    def time_up(self) -> bool:
        return self.deadline is not None and self.clock() >= self.deadline

    def should_stop(self) -> bool:
        return self.signum is not None or self.time_up()

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - self.clock())

    @property
    def reason(self) -> str | None:
        """Why the run stopped early, for the summary; None while nothing stopped it."""
        if self.signum is not None:
            return f"interrupted by {signal.Signals(self.signum).name}"
        if self.time_up():
            return f"the wall-clock budget of {self.minutes:g} minute(s) was spent"
        return None

    def exit_status(self) -> int:
        """0, or 128 + the signal's number (the shell's convention: 130 for Ctrl-C, 143 for SIGTERM)."""
        return 0 if self.signum is None else 128 + self.signum


def _on_signal(signum, frame) -> None:
    if _received:  # the second one: stop now (searchspace.cli exits 130)
        raise KeyboardInterrupt
    _received.append(signum)
    print(
        f"\n{signal.Signals(signum).name}: stopping the running trials (they are requeued), then the "
        "report and the summary; send it again to stop at once",
        file=sys.stderr,
        flush=True,
    )


class Backend(Protocol):
    name: str

    def start(self) -> None: ...

    def close(self) -> None: ...

    def prepare(self, study) -> None: ...

    def resources(self, cfg) -> dict: ...

    def describe(self, res: dict) -> str: ...

    def tune(
        self, cfg, res, search, n, run_dir, tag, log, ctx_overrides=None, early_stop=True, stop=None
    ): ...


def name_objectives(study: optuna.Study, objectives: list[dict]) -> None:
    """Store the objective names as the study's metric names, so optuna-dashboard labels its Pareto
    front, history and importance plots "top1", "flops" rather than "Objective 0", "Objective 1"
    (on a fresh run and on resume: a study stored before names were written gets them then)."""
    import warnings

    names = [o["name"] for o in objectives]
    if study.metric_names == names:
        return
    with warnings.catch_warnings():  # experimental in Optuna (since 3.2), and public
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)


def record_config(study, cfg) -> None:
    """What the study was run with, as user attrs (compared on resume by studies.run; read by analysis)."""
    name_objectives(study, cfg.objectives)
    study.set_user_attr("objectives", cfg.objectives)
    study.set_user_attr("config", config_mod.to_storable(cfg))
    study.set_user_attr("target", cfg.protocol["target"])
    study.set_user_attr("fidelity", cfg.protocol["fidelity"])
    study.set_user_attr("data", cfg.protocol["data"])
    study.set_user_attr("seed", cfg.seed)
    prior = config_mod.prior_path(cfg)  # checked by studies.run; read by the effects model with the runs
    study.set_user_attr("prior_table", str(prior) if prior else None)


class Session:
    """Lock, storage, journal integrity, heartbeat, backend, stop signals and recovery of one driver."""

    def __init__(
        self, url: str, run_dir: Path, backend: Backend, stop: StopWhen | None = None, quiet: bool = False
    ):
        self.url, self.run_dir, self.backend = url, Path(run_dir), backend
        self.console = Console(quiet=quiet)  # lines, and a status line at the bottom of a terminal
        self.log = self.console.log
        self.stop = stop or StopWhen()
        self.storage = None
        self.studies: list = []
        self.res: dict | None = None
        self.stopped: list[int] = []  # trials a signal or the time budget stopped (requeued at the end)
        self._lock = st.DriverLock(self.run_dir)
        self._heartbeat = None

    def __enter__(self) -> Session:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock.__enter__()
        try:
            # a torn journal tail is dropped (a copy kept), never appended to
            st.check_before_writing(self.url)
            self.storage = st.open_or_create(self.url)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def open(self, name: str, directions, create: bool = True):
        """The study `name` (created when missing and `create`), held by this session; None if absent."""
        study = (
            optuna.create_study(
                study_name=name, storage=self.storage, directions=directions, load_if_exists=True
            )
            if create
            else st.find_study(self.storage, name)
        )
        if study is not None:
            self.studies.append(study)
        return study

    def recover(self, study) -> list[int]:
        """Requeue the RUNNING trials of a driver that died (studies.storage.recover)."""
        return st.recover(self.storage, study)

    def start(self, cfg) -> dict:
        """The backend up, signals caught, the heartbeat beating: the resources trials get (once)."""
        if self.res is None:
            self.backend.start()
            self.stop.install()  # after ray.init, which sets a SIGTERM handler of its own
            self._heartbeat = st.Heartbeat(self.storage, [s.study_name for s in self.studies]).start()
            self.res = self.backend.resources(cfg)
            for s in self.studies:
                self.backend.prepare(s)
            self.log(self.backend.describe(self.res))
        return self.res

    def progress(self, total: int, done: int = 0, label: str = "trials") -> Progress:
        """A line per finished trial with the count and the ETA (set it as the search's `progress`;
        after start(), which knows how many run at a time)."""
        return Progress(self.console, total, done, self.res["concurrency"], label)

    @property
    def driver_id(self) -> str | None:
        """This driver's id (the "driver" user attr of the trials it asks), once started."""
        return self._heartbeat.id if self._heartbeat else None

    def run(self, cfg, search, n: int, tag: str, ctx_overrides: dict | None = None, early_stop: bool = True):
        """Train n trials asked by `search` (a studies.search.StudySearch) on the backend."""
        res = self.start(cfg)
        self.backend.tune(
            cfg,
            res,
            search,
            n,
            self.run_dir,
            tag,
            self.log,
            ctx_overrides=ctx_overrides,
            early_stop=early_stop,
            stop=self.stop,
        )
        if search.write_error is not None:  # the storage is intact up to it; the same command resumes
            raise search.write_error
        return search

    def finish(self) -> None:
        """Heartbeat stopped, backend closed, and the trials a signal or the time budget stopped
        requeued (`stopped`); the lock is kept until the session's block ends (report, summary)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()  # marks this driver stopped: recover() takes its RUNNING trials for dead
            self._heartbeat = None
        self.backend.close()
        if self.storage is not None and self.stop.should_stop():
            # The trials the backend stopped were never told: marked interrupted and requeued now, as
            # the next run would, so that the summary and the report show them as what they are.
            self.stopped += [n for s in self.studies for n in st.recover(self.storage, s)]

    def __exit__(self, *exc) -> None:
        try:
            self.finish()
        finally:
            self._lock.__exit__(None, None, None)


# -- what a session prints -------------------------------------------------------------------------
# One line per finished trial on stdout, and on a terminal one status line on stderr, redrawn every
# second (trials done / total, running, failed, elapsed, ETA), so a long run says how far it is
# between trials. Piped or redirected (stderr not a terminal) there is no status line and no control
# characters: each trial line ends with the same counts instead. `--quiet` prints nothing of either.
CLEAR = "\r\x1b[K"  # carriage return + erase to the end of the line


def duration(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Console:
    """The driver's output. Lines go to `out`; when `err` is a terminal, a status line is kept at
    the bottom of it (cleared before each line is printed, drawn again after)."""

    def __init__(self, quiet: bool = False, out=None, err=None, tty: bool | None = None):
        self.quiet = quiet
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.tty = (not quiet) and (self.err.isatty() if tty is None else tty)
        self._status = ""
        self._lock = threading.RLock()

    def log(self, message: str) -> None:
        if self.quiet:
            return
        with self._lock:
            self._erase()
            print(message, file=self.out, flush=True)
            self._draw()

    def status(self, text: str) -> None:
        """Replace the status line (a terminal only; ignored otherwise)."""
        if not self.tty:
            return
        with self._lock:
            self._erase()
            self._status = text
            self._draw()

    def clear_status(self) -> None:
        self.status("")

    def _erase(self):
        if self.tty and self._status:
            self.err.write(CLEAR)
            self.err.flush()

    def _draw(self):
        if self.tty and self._status:
            try:  # longer than the terminal, it would wrap and \r could not erase it
                columns = os.get_terminal_size(self.err.fileno()).columns
            except (OSError, ValueError, AttributeError):
                columns = 0  # unknown (a pseudo-terminal nobody sized)
            self.err.write(self._status[: max(columns or 80, 40) - 1])
            self.err.flush()

    def __getstate__(self):  # Ray may pickle the searcher that holds this: streams and locks stay here
        return {"quiet": self.quiet, "tty": False}

    def __setstate__(self, state):
        self.__init__(quiet=state["quiet"], tty=state["tty"])


class Progress:
    """Progress of one batch of trials (a search, or the reference designs) towards `total`.

    `done` trials were finished before this run. The ETA spreads the remaining trials over
    `concurrency` slots at the mean wall time of the trials finished in this run (the wall time
    each trial reported; not ask to tell, which also holds a worker's one-off start), less what
    the running ones have already spent; before the first trial finishes it is unknown ("?").
    """

    def __init__(
        self,
        console: Console,
        total: int,
        done: int = 0,
        concurrency: int = 1,
        label: str = "trials",
        clock=time.monotonic,
        tick_s: float = 1.0,
    ):
        self.console, self.total, self.before, self.label = console, total, done, label
        self.concurrency = max(1, concurrency)
        self.clock = clock
        self.t0 = clock()
        self.running: dict = {}  # key -> start time
        self.walls: list[float] = []
        self.counts = {"complete": 0, "pruned": 0, "failed": 0}
        self.tick_s = tick_s
        self._stop = threading.Event()
        self._thread = None

    # -- events from the searcher ----------------------------------------------------------------
    def started(self, key) -> None:
        self.running[key] = self.clock()
        self.refresh()

    def finished(self, key, state: TrialState, line: str, wall_s: float | None = None) -> None:
        """`wall_s`: the trial's own wall time as it reported it; without one, ask to tell."""
        start = self.running.pop(key, None)
        if wall_s:
            self.walls.append(float(wall_s))
        elif start is not None:
            self.walls.append(self.clock() - start)
        kind = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(state, "failed")
        self.counts[kind] += 1
        self.console.log(line if self.console.tty else f"{line}  | {self.summary()}")
        self.refresh()

    # -- numbers ---------------------------------------------------------------------------------
    @property
    def done(self) -> int:
        return self.before + sum(self.counts.values())

    def eta(self) -> float | None:
        if not self.walls:
            return None
        mean = sum(self.walls) / len(self.walls)
        now = self.clock()
        waiting = max(self.total - self.done - len(self.running), 0)
        left = waiting * mean + sum(max(mean - (now - t), 0.0) for t in self.running.values())
        return left / self.concurrency

    def summary(self) -> str:
        parts = [
            f"{self.done}/{self.total} {self.label} done",
            f"{len(self.running)} running",
            f"{self.counts['failed']} failed",
        ]
        if self.counts["pruned"]:
            parts.append(f"{self.counts['pruned']} pruned")
        parts += [f"{duration(self.clock() - self.t0)} elapsed", f"ETA {duration(self.eta())}"]
        return ", ".join(parts)

    # -- the terminal's status line --------------------------------------------------------------
    def refresh(self) -> None:
        self.console.status(f"[{self.summary()}]")

    def _tick(self):
        while not self._stop.wait(self.tick_s):
            self.refresh()

    def __enter__(self) -> Progress:
        if self.console.tty:
            self.refresh()
            self._thread = threading.Thread(target=self._tick, name="studies-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.console.clear_status()

    def __getstate__(self):  # see Console.__getstate__
        return {k: v for k, v in self.__dict__.items() if k not in ("_stop", "_thread", "clock")}

    def __setstate__(self, state):
        self.__dict__.update(state, _stop=threading.Event(), _thread=None, clock=time.monotonic)
