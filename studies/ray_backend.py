"""The Ray backend: trials trained by Ray Tune over the CPUs and GPUs of one machine or a cluster.

A backend is what a studies.session.Session hands N trials to (`tune`); the other one is
studies.table_backend.TableBackend, which answers them from a benchmark table. Both say what they
hold (`resources`, `describe`), and start and close with the session.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from analysis import metrics
from searchspace.errors import UserError

from .trainable import TrialContext, run_trial

REPO = Path(__file__).resolve().parent.parent


def init_ray(address: str | None) -> bool:
    """Start (or join) Ray; returns True when this call started it (and must shut it down)."""
    import logging

    import ray

    # A failed trial is reported on one line by the searcher; Ray's own traceback is in its logs.
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no TensorBoard/CSV per trial
    # Ctrl-C and SIGTERM are the driver's (studies.session.StopWhen): Tune's own SIGINT handler would end the
    # run without telling the driver, which then could not tell an interrupted run from a finished one.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if ray.is_initialized():
        return False
    path = os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    # Workers import studies/searchspace/trainers from the same checkout (cluster nodes: same path).
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
            runtime_env={"env_vars": {"PYTHONPATH": path}} if address else None,
        )
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as e:  # e.g. auto with no cluster
        raise UserError(
            f"--address {address!r}: cannot join the Ray cluster ({str(e).strip().splitlines()[0]})"
        ) from None
    return True


def check_address(address: str, timeout: float = 3.0) -> None:
    """A host:port cluster address must be a Ray head before anything is written: ray.init on a
    wrong address retries for minutes. Ray's GCS is a gRPC (HTTP/2) server, so it answers the
    HTTP/2 client preface with a SETTINGS frame; nothing else we might reach does."""
    import socket

    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(
            f"--address {address!r}: expected host:port (the head's GCS, e.g. 10.0.0.1:6379), or auto"
        )
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            sock.sendall(preface)
            frame = sock.recv(9)
    except OSError as e:
        raise UserError(f"--address {address!r}: no Ray head answers there ({e.strerror or e})") from None
    if len(frame) < 4 or frame[3] != 4:  # frame type 4 = SETTINGS
        raise UserError(
            f"--address {address!r}: something answers there, but not a Ray head (GCS) "
            "(give the port `ray start --head` printed, 6379 by default)"
        )


def trial_metrics() -> dict:
    """What a trial reports, from analysis.metrics: a placeholder for every objective until it is
    known, the trainer's per-epoch values, and every value the trainer returns (TrainResult fields)."""
    return {
        "placeholders": {n: metrics.placeholder(n) for n in metrics.OBJECTIVES},
        "epoch": metrics.names("epoch"),
        "trained": metrics.names("epoch", "train"),
    }


def _imports(modules) -> dict:
    """{module: the sys.path folder it was imported from here}: a worker puts that folder on its own
    path before importing (its working folder is the trial's, and the driver's path may have come
    from its working folder); a cluster node needs the same folder, as it needs this checkout."""
    import sys

    roots = {}
    for name in modules:
        top = sys.modules[name.split(".")[0]]  # imported when [space] was validated
        package = getattr(top, "__path__", None)  # a package's folder(s); a plain module has a file
        file = list(package)[0] if package else getattr(top, "__file__", None)
        roots[name] = str(Path(file).parent) if file else None
    return roots


def trial_context(cfg, res, **overrides) -> TrialContext:
    """The study's protocol as a trial needs it (studies.trainable.run_trial's ctx)."""
    ctx = TrialContext(
        data=cfg.data,
        fidelity=cfg.fidelity,
        target=cfg.protocol["target"],
        seed=cfg.seed,
        device=res["device"],
        cpus_per_trial=res["cpu"],
        evaluate_every_epoch=cfg.early_stopping.asha,  # only ASHA reads per-epoch top-1
        imports=_imports(cfg.space.imports),  # [space] imports: each worker registers them too
        metrics=trial_metrics(),
    )
    return replace(ctx, **overrides)


class RayBackend:
    """Ray Tune trains each trial (studies.trainable.run_trial) on the resources Ray sees."""

    name = "ray"

    def __init__(self, address: str | None = None):
        self.address = address
        self.started = False  # this process started Ray (and shuts it down)

    def start(self) -> None:
        self.started = init_ray(self.address) or self.started

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False

    def prepare(self, study) -> None:
        """Nothing to restore: a resumed study's trials are in its storage."""

    def resources(self, cfg) -> dict:
        import ray

        r = cfg.resources
        total = ray.cluster_resources()
        gpus = r.gpus_per_trial
        if gpus == "auto":
            gpus = 1 if total.get("GPU", 0) >= 1 else 0
        cpus = float(r.cpus_per_trial)
        conc = cfg.budget.concurrency
        if not conc:  # as many as the resources hold
            conc = int(total.get("GPU", 0) // gpus) if gpus else int(total.get("CPU", 1) // cpus)
        return {
            "cpu": cpus,
            "gpu": float(gpus),
            "concurrency": max(1, conc),
            "device": "cuda" if gpus else "cpu",
            "cluster": {k: total.get(k, 0) for k in ("CPU", "GPU")},
            "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
        }

    def describe(self, res: dict) -> str:
        return (
            f"ray: {res['nodes']} node(s), {res['cluster']['CPU']:g} CPU, {res['cluster']['GPU']:g} GPU; per trial "
            f"{res['cpu']:g} CPU, {res['gpu']:g} GPU on {res['device']}; up to {res['concurrency']} at a time"
        )

    def tune(
        self,
        cfg,
        res: dict,
        search,
        n: int,
        run_dir: Path,
        tag: str,
        log,
        ctx_overrides: dict | None = None,
        early_stop: bool = True,
        stop=None,
    ) -> None:
        from ray import tune
        from ray.tune.search import ConcurrencyLimiter

        ctx = trial_context(cfg, res, **(ctx_overrides or {}))
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, ctx=ctx), {"cpu": res["cpu"], "gpu": res["gpu"]}
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(search, max_concurrent=res["concurrency"]),
                scheduler=scheduler(cfg) if early_stop else None,
                num_samples=n,
                reuse_actors=True,
                trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=f"{tag}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str(run_dir / "ray"),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=0),
                stop=tune_stopper(stop) if stop is not None else None,  # a signal, or [budget] minutes
            ),
        )
        tuner.fit()


def scheduler(cfg):
    """[early_stopping]: the rule of studies.asha (the one the table backend asks too) as a Ray
    Tune scheduler; None without early stopping."""
    # Ray's scheduler classes load only when a run starts
    from .asha import NoStopping, RuleScheduler, stopping_rule

    rule = stopping_rule(cfg)
    return None if isinstance(rule, NoStopping) else RuleScheduler(rule)


def tune_stopper(stop):
    """A Ray Tune Stopper (public API) that ends the whole experiment when `stop` says so."""
    from ray.tune import Stopper

    class StopAll(Stopper):
        def __init__(self, stop):
            self.stop = stop

        def __call__(self, trial_id, result) -> bool:
            return False

        def stop_all(self) -> bool:
            return self.stop.should_stop()

    return StopAll(stop)
