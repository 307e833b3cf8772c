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
    from trainers.data import DataSpec, load_data

    return load_data(DataSpec(**ctx["data"]), ctx["fidelity"]["resolution"])


def _latency_ms(model, ctx: dict) -> float | None:
    """Measured inference latency of the trained proxy network: batch 1 at the proxy resolution, eval
    mode, median of 10 after 3 warm-up passes (trainers.measure). Measured for every trained trial,
    objective or not: at batch 1 and proxy size it costs well under a second."""
    from trainers.measure import inference_latency

    try:
        return inference_latency(model, resolution=ctx["fidelity"]["resolution"], batch_sizes=(1,),
                                 device=ctx["device"])[1]
    except Exception:  # e.g. out of memory: no latency (a FAIL only where latency_ms is an objective)
        return None


def _node() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:
        return ""


def run_trial(config: dict, ctx: dict) -> None:
    """config: {"genome": JSON, "trial_number": n, optional "seed", ...params}; ctx: the study's protocol.

    A "seed" in config (a benchmark table's per-trial seed) replaces the study's seed for this trial.
    """
    import torch
    from ray import tune

    import searchspace
    from searchspace import Genome
    from trainers.train import Fidelity, build_model, train

    t0 = time.perf_counter()
    torch.set_num_threads(max(1, int(ctx["cpus_per_trial"])))
    number = config["trial_number"]
    epochs = ctx["fidelity"]["epochs"]
    base = {"trial_number": number, "node": _node(), "pid": os.getpid(), "epochs_target": epochs}
    rec = {**base, "status": "running", "epochs_completed": 0, "top1": 0.0, "flops": 0, "params": 0,
           "activations": 0, "latency_ms": 0.0}  # every report carries every objective key
    seed = config.get("seed", ctx["seed"])
    curves = {"top1_per_epoch": [], "top5_per_epoch": []}  # what a benchmark table replays
    try:
        genome = Genome.from_json(config["genome"])
        c = searchspace.cost(genome, **{k: ctx["target"][k] for k in ("convention", "resolution", "num_classes")})
        rec.update(genome_key=genome.key, flops=c.flops, params=c.params, activations=c.activations)
        if ctx.get("inject_failure_trial") is not None and number == ctx["inject_failure_trial"]:
            raise RuntimeError(f"injected failure in trial {number} (inject_failure_trial)")
        data = _data(ctx)
        fid = Fidelity.from_dict(ctx["trainer_fidelity"])

        def report(epoch: int, m: dict):
            rec.update(epochs_completed=epoch, top1=_f(m.get("top1")), top5=_f(m.get("top5")), loss=_f(m.get("loss")),
                       train_s=m.get("train_s"), wall_s=time.perf_counter() - t0)  # a pruned trial keeps these
            for k in ("top1", "top5"):
                curves[f"{k}_per_epoch"].append(rec[k])
            rec.update({k: list(v) for k, v in curves.items()})
            if epoch < epochs:  # the last epoch goes out with the final record (ASHA may stop on it)
                tune.report(dict(rec))

        torch.manual_seed(seed)  # the same initialisation train() would make; kept to time it after
        model = build_model(genome, data.num_classes, fid.width_mult)
        res = train(model, fid, data, device=ctx["device"], seed=seed, report=report,
                    evaluate_every_epoch=ctx.get("evaluate_every_epoch", True))
        rec.update(status=res.status, epochs_completed=res.epochs, top1=_f(res.top1), top5=_f(res.top5),
                   loss=_f(res.loss), wall_s=time.perf_counter() - t0, train_s=res.train_s,
                   images_per_s=res.images_per_s, latency_ms=None if res.status == "oom" else _latency_ms(model, ctx),
                   device=res.device, peak_mem_mb=res.peak_mem_mb, seed=res.seed, num_classes=res.num_classes)
        del model
        if res.status == "diverged":
            rec["top1"] = 1.0 / res.num_classes  # chance level: see studies/search.py
        if res.status == "oom":
            rec["error"] = f"out of memory on {res.device} at batch size {fid.batch_size}"
        rec["final"] = True
        tune.report(dict(rec))
    except Exception as e:
        # One result with the error, then raise so Ray records the trial as errored too.
        rec.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:],
                   wall_s=time.perf_counter() - t0, final=True)
        tune.report(dict(rec))
        raise


def _f(v):
    return float(v) if v is not None and math.isfinite(float(v)) else None
