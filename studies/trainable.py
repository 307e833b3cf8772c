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


def _data(ctx: dict):
    """The decoded data set; trainers.data.load_data memoizes it per worker process (reused actors)."""
    from trainers.data import load_data

    return load_data(ctx["data"], ctx["fidelity"].resolution)


def _gpu_share(ctx: dict) -> float:
    """The GPUs Ray gave this trial (a fraction when trials are packed on one GPU)."""
    import ray

    try:
        return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    except Exception:  # outside a Ray worker (tests, a plain call)
        return float(ctx.get("gpus_per_trial") or 0.0)


def _node() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:
        return ""


def run_trial(config: dict, ctx: dict) -> None:
    """config: {"genome": JSON, "trial_number": n, "cost": {...}, optional "seed", "recipe",
    ...params}; ctx: the study's protocol. A "seed" in config (a calibration's or a benchmark table's
    per-trial seed) replaces the study's seed for this trial; a "recipe" (searchspace.Recipe fields,
    a reference design under [references] recipe = "authors") replaces the common recipe."""
    import torch
    from ray import tune

    from searchspace import Genome, Recipe
    from trainers.environment import describe
    from trainers.train import release_memory, train

    t0 = time.perf_counter()
    torch.set_num_threads(max(1, int(ctx["cpus_per_trial"])))
    number = config["trial_number"]
    seed = config.get("seed", ctx["seed"])  # a trial's own seed (calibration, table), else the study's
    epochs = ctx["fidelity"].epochs
    gpus = _gpu_share(ctx) if ctx["device"] == "cuda" else 0.0
    base = {
        "trial_number": number,
        "node": _node(),
        "pid": os.getpid(),
        "epochs_target": epochs,
        "gpus_per_trial": gpus,
    }  # < 1: the GPU was shared, its throughput and latency with it
    plan = ctx[
        "metrics"
    ]  # from analysis.metrics, via the driver (a worker may not know a metric registered there)
    rec = {
        **base,
        "status": "running",
        "epochs_completed": 0,
        **plan["placeholders"],
    }  # every objective key, always
    curves = {"top1_per_epoch": [], "top5_per_epoch": []}  # what a benchmark table replays
    try:
        _import_user_modules(ctx.get("imports") or {})
        genome = Genome.from_json(config["genome"])
        recipe = Recipe.from_dict(config.get("recipe"))  # the driver's choice (studies.search.trial_recipe)
        c = config.get("cost") or _cost(genome, ctx["target"])  # the driver counts it (studies.costs)
        rec.update(genome_key=genome.key, **c)
        data = _data(ctx)
        fid = ctx["fidelity"]  # a trainers.Fidelity, checked when the config was loaded

        def report(epoch: int, m: dict):
            rec.update(
                epochs_completed=epoch,
                **{k: _f(m.get(k)) for k in plan["epoch"]},
                train_s=m.get("train_s"),
                wall_s=time.perf_counter() - t0,
            )  # a pruned trial keeps these
            for k in ("top1", "top5"):
                curves[f"{k}_per_epoch"].append(rec[k])
            rec.update({k: list(v) for k, v in curves.items()})
            if epoch < epochs:  # the last epoch goes out with the final record (ASHA may stop on it)
                tune.report(dict(rec))

        # train() builds the model itself (seeded) and frees it before returning: nothing here keeps
        # it on the device, also after an OOM; the latency is measured inside, on the trained model.
        res = train(
            genome,
            fid,
            data,
            device=ctx["device"],
            seed=seed,
            report=report,
            evaluate_every_epoch=ctx.get("evaluate_every_epoch", True),
            memory_fraction=gpus if 0 < gpus < 1 else None,
            measure_latency=True,
            recipe=recipe,
        )
        rec.update({k: _f(getattr(res, k, None)) for k in plan["trained"]})  # top1, latency_ms, ...
        rec.update(
            status=res.status,
            epochs_completed=res.epochs,
            wall_s=time.perf_counter() - t0,
            train_s=res.train_s,
            device=res.device,
            seed=res.seed,
            num_classes=res.num_classes,
            warmup_s=res.warmup_s,
            compiled_graphs=res.compiled_graphs,
            deterministic_requested=res.deterministic_requested,
            deterministic=res.deterministic,
            nondeterministic_ops=res.nondeterministic_ops,
            data_on_device=res.data_on_device,
            memory_fraction=res.memory_fraction,
            environment=describe(res.device),  # a run's identity includes where it ran
        )
        if res.status == "diverged":
            rec["top1"] = 1.0 / res.num_classes  # chance level: see studies/search.py
        if res.status == "oom":
            rec["error"] = f"out of memory on {res.device} at batch size {fid.batch_size}"
        rec["final"] = True
        tune.report(dict(rec))
    except Exception as e:
        # One result with the error, then raise so Ray records the trial as errored too.
        rec.update(
            status="error",
            error=f"{type(e).__name__}: {e}",
            traceback=traceback.format_exc()[-4000:],
            wall_s=time.perf_counter() - t0,
            final=True,
        )
        traceback.clear_frames(e.__traceback__)  # the frames' locals (tensors) must not outlive the trial
        release_memory(ctx["device"])
        tune.report(dict(rec))
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
