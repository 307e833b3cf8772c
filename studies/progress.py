"""What the driver prints while a study runs: one line per finished trial on stdout, and on a
terminal one status line on stderr, redrawn every second (trials done / total, running, failed,
elapsed, ETA), so a long run says how far it is between trials.

Piped or redirected (stderr not a terminal) there is no status line and no control characters:
each trial line ends with the same counts instead. `--quiet` prints nothing of either.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time

from optuna.trial import TrialState

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
