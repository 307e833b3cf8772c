"""The Ray Tune trainable: one Ray trial = one genome, proxy-trained with trainers.train.

It runs in a Ray worker and never touches the Optuna storage: everything it learns goes back to
the driver through tune.report (one result per epoch, then a final one with the full record), and
the driver's searcher (studies.search) writes the trial's user attrs.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import dataclass


@dataclass(frozen=True)
class TrialContext:
    """The study's protocol as a trial needs it: made by the backend in the driver
    (studies.ray_backend.trial_context), pickled to every worker."""

    data: object  # trainers.data.DataSpec
    fidelity: object  # trainers.Fidelity, checked when the config was loaded
    target: dict  # the full-size target the costs are counted at
    seed: int  # the study's seed; a trial's own seed (calibration, table) replaces it
    device: str  # "cpu" or "cuda"
    cpus_per_trial: float
    evaluate_every_epoch: bool  # top-1 after every epoch (ASHA's rungs, a table's curves)
    imports: dict  # [space] imports: module -> the folder it was imported from in the driver
    metrics: dict  # what a trial reports (studies.ray_backend.trial_metrics)
    gpus_per_trial: float = 0.0  # outside a Ray worker: the share to assume


def _data(ctx: TrialContext):
    """The decoded data set; trainers.data.load_data memoizes it per worker process (reused actors)."""
    from trainers.data import load_data

    return load_data(ctx.data, ctx.fidelity.resolution)


def _gpu_share(ctx: TrialContext) -> float:
    """The GPUs Ray gave this trial (a fraction when trials are packed on one GPU)."""
    import ray

    try:
        return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    except Exception:  # outside a Ray worker (tests, a plain call)
        return float(ctx.gpus_per_trial)


def _node() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:
        return ""


def run_trial(config: dict, ctx: TrialContext) -> None:
    """config: {"genome": JSON, "trial_number": n, "cost": {...}, optional "seed", "recipe",
    ...params}; ctx: the study's protocol. A "seed" in config (a calibration's or a benchmark table's
    per-trial seed) replaces the study's seed for this trial; a "recipe" (searchspace.Recipe fields,
    a reference design under [references] recipe = "authors") replaces the common recipe."""
    import torch
    from ray import tune

    from searchspace import Genome, Recipe
    from trainers.environment import describe
    from trainers.record import Status, TrialRecord
    from trainers.train import release_memory, train

    t0 = time.perf_counter()
    torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
    seed = config.get("seed", ctx.seed)  # a trial's own seed (calibration, table), else the study's
    epochs = ctx.fidelity.epochs
    gpus = _gpu_share(ctx) if ctx.device == "cuda" else 0.0
    # from analysis.metrics, via the driver (a worker may not know a metric registered there)
    plan = ctx.metrics
    rec = TrialRecord(
        trial_number=config["trial_number"],
        node=_node(),
        pid=os.getpid(),
        epochs_target=epochs,
        gpus_per_trial=gpus,
        status=Status.RUNNING,
        epochs_completed=0,
        metrics=dict(plan["placeholders"]),  # every objective key, always
    )
    curves = {"top1": [], "top5": []}  # what a benchmark table replays
    try:
        _import_user_modules(ctx.imports)
        genome = Genome.from_json(config["genome"])
        recipe = Recipe.from_dict(config.get("recipe"))  # the driver's choice (studies.search.trial_recipe)
        cost = config.get("cost") or _cost(genome, ctx.target)  # the driver counts it (studies.costs)
        rec.genome_key = genome.key
        rec.metrics.update(cost)
        data = _data(ctx)
        fid = ctx.fidelity  # a trainers.Fidelity, checked when the config was loaded

        def report(epoch: int, m: dict):
            # a pruned trial keeps these
            rec.epochs_completed = epoch
            rec.metrics.update({k: _f(m.get(k)) for k in plan["epoch"]})
            rec.train_s, rec.wall_s = m.get("train_s"), time.perf_counter() - t0
            for k, curve in curves.items():
                curve.append(rec.metrics[k])
            # copies: a result already reported must not change
            rec.top1_per_epoch, rec.top5_per_epoch = list(curves["top1"]), list(curves["top5"])
            if epoch < epochs:  # the last epoch goes out with the final record (ASHA may stop on it)
                tune.report(rec.to_dict())

        # train() builds the model itself (seeded) and frees it before returning: nothing here keeps
        # it on the device, also after an OOM; the latency is measured inside, on the trained model.
        res = train(
            genome,
            fid,
            data,
            device=ctx.device,
            seed=seed,
            report=report,
            evaluate_every_epoch=ctx.evaluate_every_epoch,
            memory_fraction=gpus if 0 < gpus < 1 else None,
            measure_latency=True,
            recipe=recipe,
        )
        rec.metrics.update({k: _f(getattr(res, k, None)) for k in plan["trained"]})  # top1, latency_ms, ...
        rec.update_from(res)  # status, device, seed, ...
        rec.wall_s = time.perf_counter() - t0  # the whole trial, not only train()
        rec.environment = describe(res.device)  # a run's identity includes where it ran
        if res.status == Status.DIVERGED:
            rec.metrics["top1"] = 1.0 / res.num_classes  # chance level: see studies/search.py
        if res.status == Status.OOM:
            rec.error = f"out of memory on {res.device} at batch size {fid.batch_size}"
        rec.final = True
        tune.report(rec.to_dict())
    except Exception as e:
        # One result with the error, then raise so Ray records the trial as errored too.
        rec.status = Status.ERROR
        rec.error = f"{type(e).__name__}: {e}"
        rec.traceback = traceback.format_exc()[-4000:]
        rec.wall_s = time.perf_counter() - t0
        rec.final = True
        traceback.clear_frames(e.__traceback__)  # the frames' locals (tensors) must not outlive the trial
        release_memory(ctx.device)
        tune.report(rec.to_dict())
        raise


def _import_user_modules(imports: dict) -> None:
    """[space] imports, from the folders the driver found them in (a no-op once imported in this worker)."""
    import sys

    from searchspace.plugins import import_modules

    for root in imports.values():
        if root and root not in sys.path:
            sys.path.append(root)
    import_modules(list(imports), "space.imports")


def _cost(genome, target: dict) -> dict:
    from .costs import target_cost

    return target_cost(genome, target)


def _f(v):
    return float(v) if v is not None and math.isfinite(float(v)) else None
