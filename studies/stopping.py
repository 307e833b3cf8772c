"""When a study run ends before its trial budget: a wall-clock budget or a signal.

`[budget] minutes` (or `--minutes`) and Ctrl-C / SIGTERM all end a run the same way: the driver asks
for no new trial, stops the trials still training (each is marked FAIL with status "interrupted" and
its genome requeued, exactly as a resume would do it, so it is never counted nor taken for a
finished trial on a front), writes the report and prints the summary. Running trials are stopped,
not finished, so that the budget bounds the run: one KernelWarehouse-heavy trial alone can train for
minutes. A signal then gives exit status 128 + its number (SIGINT 130, SIGTERM 143); a second signal
stops at once, without the summary.
"""

from __future__ import annotations

import signal
import sys
import time

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


def tune_stopper(stop: StopWhen):
    """A Ray Tune Stopper (public API) that ends the whole experiment when `stop` says so."""
    from ray.tune import Stopper

    class StopAll(Stopper):
        def __init__(self, stop: StopWhen):
            self.stop = stop

        def __call__(self, trial_id, result) -> bool:
            return False

        def stop_all(self) -> bool:
            return self.stop.should_stop()

    return StopAll(stop)
