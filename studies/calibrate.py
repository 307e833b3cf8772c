"""`python -m studies.calibrate NAME|file.toml`: how much the study's proxy top-1 can be trusted.

Trains the published designs inside the study's space (searchspace.catalog, space.contains) plus K
random genomes of the space, each with S seeds, under the study's protocol and, with `--versus
KEY=VALUE ...` (or `versus` in the config's [calibration] table), under a second, longer reference
protocol. The trials run through Ray Tune like a study's (studies.search, studies.trainable) and are
stored in the study's storage as '<name>.calibration', one trial per (protocol, design, seed) with
user attrs design / trial_seed / protocol, so a re-run after a crash or SIGKILL continues where it
stopped (trials of a dead driver requeued, none counted twice). At the end it prints, and stores as
the study user attr "summary" (analysis.calibration reads it), per protocol: each design's mean and
std, the pooled seed std, the std of design means, SNR, the smallest resolvable top-1 difference and
the compute per run; between the protocols Kendall's tau-b and Spearman's rho with bootstrap
intervals. The report and the front of the study then draw their error bars from it.
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from pathlib import Path

import optuna
from optuna.trial import TrialState

from analysis.calibration import CALIBRATION_SUFFIX
from searchspace.cli import argument_parser, cli_main
from searchspace.errors import UserError
from trainers.record import Status

from . import config as config_mod
from . import storage as st
from .ray_backend import RayBackend, check_address
from .session import StopWhen

PROTOCOLS = ("study", "versus")
VERSUS_SECTIONS = ("fidelity", "data")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def parse_args(argv=None):
    ap = argument_parser(prog="python -m studies.calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("study", help=f"shipped config ({', '.join(config_mod.shipped())}) or a .toml path")
    ap.add_argument(
        "--designs",
        type=int,
        help="random genomes of the space besides the published designs (default: [calibration] designs, 8)",
    )
    ap.add_argument("--seeds", type=int, help="seeds per design (default: [calibration] seeds, 3)")
    ap.add_argument(
        "--only",
        help="comma-separated catalog names: the published designs to train (default: "
        "every one inside the space)",
    )
    ap.add_argument(
        "--versus",
        nargs="+",
        metavar="KEY=VALUE",
        help="the reference protocol: overrides of "
        "[fidelity] / [data], e.g. fidelity.epochs=16 data.max_per_class=320",
    )
    ap.add_argument("--no-versus", action="store_true", help="ignore the config's [calibration] versus")
    ap.add_argument("--out", help="run folder (default: runs/<study name>)")
    ap.add_argument("--name", help="study name (default: the config's)")
    ap.add_argument(
        "--storage",
        help="Optuna storage: an RDB URL or a journal file path (default: the run folder's study.journal)",
    )
    ap.add_argument(
        "--concurrency", type=int, help="trials at the same time (default: what the resources allow)"
    )
    ap.add_argument("--address", help="join a running Ray cluster")
    ap.add_argument(
        "--bootstrap", type=int, default=2000, help="bootstrap replicates for the tau / rho intervals"
    )
    ap.add_argument("--quiet", action="store_true", help="no per-trial lines")
    return ap.parse_args(argv)


def _value(text: str):
    """A TOML value (16, 0.05, true, "x"); anything else is taken as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_versus(items) -> dict:
    out = {}
    for item in items or []:
        key, eq, val = item.partition("=")
        if not eq or not val:
            raise UserError(f"--versus {item!r}: expected KEY=VALUE, e.g. fidelity.epochs=16")
        out[key.strip()] = _value(val.strip())
    return out


def _with_overrides(cfg, overrides: dict, where: str):
    """A copy of the config with dotted [fidelity] / [data] overrides, fully validated."""
    known_data = config_mod.DEFAULTS["data"]
    for key in overrides:
        sec, dot, name = key.partition(".")
        if not dot or sec not in VERSUS_SECTIONS:
            raise UserError(
                f"{where} {key!r}: only {' / '.join(s + '.KEY' for s in VERSUS_SECTIONS)} may differ "
                "between the protocols"
            )
        if sec == "data" and name not in known_data:
            raise UserError(f"{where} {key!r}: unknown [data] key (known: {', '.join(known_data)})")
    return config_mod.with_overrides(cfg, overrides, where)


def prepare(args) -> dict:
    """Every check that needs no storage and no Ray."""
    for n in ("designs", "seeds", "concurrency", "bootstrap"):
        v = getattr(args, n)
        if v is not None and (v < (0 if n == "designs" else 1) or isinstance(v, bool)):
            raise UserError(f"--{n}: expected an integer >= {0 if n == 'designs' else 1}, got {v}")
    cfg = config_mod.load(args.study, {"budget.concurrency": args.concurrency})
    if args.name:
        cfg = config_mod.with_overrides(cfg, {"name": args.name}, "--name")
    cal = cfg.calibration  # checked with the rest of the config
    where = Path(cfg.source).name
    designs = cal.designs if args.designs is None else args.designs
    seeds = cal.seeds if args.seeds is None else args.seeds
    overrides = {} if args.no_versus else (parse_versus(args.versus) if args.versus else dict(cal.versus))
    protocols = {"study": cfg}
    if overrides:
        protocols["versus"] = _with_overrides(
            cfg, overrides, "--versus" if args.versus else f"{where}: calibration.versus"
        )
        if protocols["versus"].protocol == cfg.protocol:
            raise UserError("--versus: the reference protocol is the study's own; change fidelity or data")
    from searchspace import catalog, space

    spec = cfg.space
    inside = [d.name for d in catalog.designs() if space.contains(spec, d.genome)]
    if args.only:
        only = [n.strip() for n in args.only.split(",") if n.strip()]
        bad = [n for n in only if n not in inside]
        if bad:
            raise UserError(
                f"--only {bad[0]!r}: not a catalog design inside the space of {cfg.name} "
                f"(inside: {', '.join(inside) or 'none'})"
            )
        inside = only
    if not inside and not designs:
        raise UserError(
            f"nothing to calibrate: no published design inside the space of {cfg.name} and --designs 0"
        )
    run_dir, url = st.locate(args.out, cfg.name, args.storage)
    if args.address:
        check_address(args.address)
    return {
        "cfg": cfg,
        "protocols": protocols,
        "published": inside,
        "designs": designs,
        "seeds": seeds,
        "run_dir": run_dir,
        "url": url,
        "overrides": overrides,
    }


# -- the plan: which (protocol, design, seed) to train -------------------------------------------
def random_genomes(spec, k: int, seed: int) -> list[str]:
    """K genomes drawn uniformly from the space (Optuna's RandomSampler, seeded): the same K for the
    same seed, and the first K of a longer draw."""
    from searchspace import space

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.suggest(study.ask(), spec).to_json() for _ in range(k)]


def plan(
    cfg, published: list[str], k: int, seeds: int, stored_random: list[str]
) -> tuple[list[dict], list[str]]:
    from searchspace import catalog

    spec = cfg.space
    rand = list(stored_random[:k])
    if len(rand) < k:
        rand += random_genomes(spec, k, cfg.seed + 7919)[len(rand) :]
    designs = [(n, catalog.get(n).genome.to_json(), True) for n in published]
    designs += [(f"random-{i + 1}", g, False) for i, g in enumerate(rand)]
    entries = [
        {"design": n, "genome": g, "published": p, "trial_seed": cfg.seed + s}
        for n, g, p in designs
        for s in range(seeds)
    ]
    return entries, rand


def _key(protocol, design, seed) -> tuple:
    return (protocol, design, int(seed))


def _present(study) -> set:
    """(protocol, design, seed) of every trial that counts or will run: all but the interrupted."""
    return {
        _key(t.user_attrs.get("protocol"), t.user_attrs.get("design"), t.user_attrs.get("trial_seed", -1))
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("status") != Status.INTERRUPTED
    }


def _enqueue(study, entries, protocol: str, spec) -> int:
    from searchspace import Genome, space

    have = _present(study)
    n = 0
    for e in entries:
        if _key(protocol, e["design"], e["trial_seed"]) in have:
            continue
        study.enqueue_trial(
            space.to_params(Genome.from_json(e["genome"]), spec),
            user_attrs={
                "design": e["design"],
                "trial_seed": e["trial_seed"],
                "protocol": protocol,
                "published": e["published"],
            },
            skip_if_exists=False,
        )
        n += 1
    return n


def _waiting(study) -> dict:
    out = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        p = t.user_attrs.get("protocol")
        out[p] = out.get(p, 0) + 1
    return out


def _check_stored(study, protocols: dict) -> None:
    """A calibration study keeps its protocols: a re-run asking for other ones needs another --name."""
    stored = study.user_attrs.get("protocols") or {}
    for p, cfg in protocols.items():
        want = json.loads(json.dumps(cfg.protocol))
        if p in stored and stored[p] != want:
            diff = sorted(k for k in want if stored[p].get(k) != want[k])
            raise UserError(
                f"study {study.study_name!r}: protocol {p!r} was calibrated with another "
                f"{', '.join(diff)}; use --name for a new calibration"
            )
    space = (study.user_attrs.get("config") or {}).get("space")
    if space is not None and space != json.loads(json.dumps(protocols["study"].space_table)):
        raise UserError(
            f"study {study.study_name!r}: [space] differs from the stored calibration; use --name"
        )


# -- run -----------------------------------------------------------------------------------------
def run(plan_: dict, log) -> dict:
    from .search import GenomeSpace, SamplerSpec, StudySearch
    from .session import Session, record_config

    cfg, protocols, url = plan_["cfg"], plan_["protocols"], plan_["url"]
    spec = cfg.space
    name = cfg.name + CALIBRATION_SUFFIX
    # its own lock and Ray folder: a study (or another calibration) may run beside it
    work = plan_["run_dir"] / name
    stop = plan_.get("stop") or StopWhen()
    ran, device = 0, None
    with Session(
        url, work, RayBackend(plan_.get("address")), stop, quiet=plan_.get("quiet", False)
    ) as session:
        existing = session.open(name, None, create=False)
        if existing is not None:
            _check_stored(existing, protocols)
        study = existing or session.open(name, [o["direction"] for o in cfg.objectives])
        stored = json.loads(json.dumps({p: c.protocol for p, c in protocols.items()}))
        study.set_user_attr("protocols", {**(study.user_attrs.get("protocols") or {}), **stored})
        record_config(study, cfg)
        requeued = session.recover(study)
        if requeued:
            log(f"resuming: trial(s) {requeued} of a stopped driver marked FAIL (interrupted) and requeued")
        entries, rand = plan(
            cfg,
            plan_["published"],
            plan_["designs"],
            plan_["seeds"],
            study.user_attrs.get("random_genomes") or [],
        )
        if len(rand) > len(study.user_attrs.get("random_genomes") or []):
            study.set_user_attr("random_genomes", rand)
        names = list(dict.fromkeys(e["design"] for e in entries))
        log(
            f"calibrating {cfg.name}: {len(names)} design(s) ({len(plan_['published'])} published, "
            f"{plan_['designs']} random) x {plan_['seeds']} seed(s) x {len(protocols)} protocol(s); "
            f"storage {st.describe(url)} (study {name!r})"
        )
        # A protocol with trials already waiting (requeued) goes first: asking pops the oldest waiting trial.
        waiting = _waiting(study)
        order = sorted(protocols, key=lambda p: (-waiting.get(p, 0), PROTOCOLS.index(p)))
        present = _present(study)
        todo = {
            p: sum(1 for e in entries if _key(p, e["design"], e["trial_seed"]) not in present)
            + waiting.get(p, 0)
            for p in protocols
        }
        if any(todo.values()):
            res = session.start(cfg)
            device = res["device"]
            for p in order:
                if stop.should_stop():
                    break
                pcfg = protocols[p]
                _enqueue(study, entries, p, spec)
                n = _waiting(study).get(p, 0)
                if not n:
                    continue
                log(f"protocol {p}: {n} run(s); fidelity {json.dumps(pcfg.protocol['fidelity'])}")
                attrs = {
                    "fidelity": pcfg.protocol["fidelity"],
                    "protocol": p,
                    "held": res["gpu"] or res["cpu"],
                }
                search = StudySearch(
                    GenomeSpace(spec, session.driver_id, pcfg.protocol["target"], pcfg.references.recipe),
                    pcfg.objectives,
                    name,
                    url,
                    SamplerSpec("random", cfg.seed),
                    pcfg.fidelity.epochs,
                    attrs,
                    log,
                )
                pcfg = config_mod.with_overrides(pcfg, {"early_stopping.asha": False})  # every run in full
                session.run(pcfg, search, n, f"calibrate-{p}")
                ran += len(search.finished)
        session.finish()
        if session.stopped:  # the runs the backend stopped: requeued now, as a re-run would
            log(f"{stop.reason}: run(s) {session.stopped} stopped and requeued")
        summary = summarize(
            study,
            protocols,
            plan_["seeds"],
            n_boot=plan_.get("bootstrap", 2000),
            designs=names,
            device=device if ran else None,
        )
        study.set_user_attr("summary", summary)
        summary["ran"] = ran
        return summary


# -- summary -------------------------------------------------------------------------------------
def summarize(study, protocols: dict, seeds: int, n_boot: int = 2000, designs=None, device=None) -> dict:
    from analysis import calibration as cal
    from searchspace import catalog

    catalog_names = set(catalog.names())
    runs = {p: {} for p in protocols}
    cost = {p: {} for p in protocols}
    published = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        ua = t.user_attrs
        p, d = ua.get("protocol"), ua.get("design")
        if p not in runs or (designs is not None and d not in designs) or ua.get("status") != Status.OK:
            continue  # diverged runs are chance level by construction, not a measurement
        runs[p].setdefault(d, []).append(float(ua["top1"]))
        cost[p].setdefault(d, []).append(_compute_s(ua))
        published[d] = (
            d in catalog_names
        )  # by name: a requeued trial keeps only studies.storage.KEEP_ON_REQUEUE
    out = {"seeds": seeds, "unit": _unit(device or _device(study)), "protocols": {}, "agreement": {}}
    for p, r in runs.items():
        noise = cal.noise(r)
        pub = {d: v for d, v in r.items() if published.get(d)}
        per = {
            d: {
                **noise.designs[d],
                "published": published.get(d, False),
                "compute_s": float(sum(cost[p][d]) / len(cost[p][d])),
            }
            for d in r
        }
        n_pub = cal.noise(pub) if pub else None
        out["protocols"][p] = {
            "fidelity": protocols[p].protocol["fidelity"],
            "data": protocols[p].protocol["data"],
            "designs": per,
            "noise": noise.to_dict(),
            "noise_published": n_pub.to_dict() if n_pub else None,
            "snr_of_mean": {str(m): noise.snr_of_mean(m) for m in (1, 2, 3, 4, 8)},
            "compute_s_per_run": float(
                sum(sum(v) for v in cost[p].values()) / max(1, sum(len(v) for v in cost[p].values()))
            ),
            "runs": sum(len(v) for v in r.values()),
        }
    if "versus" in runs:
        out["agreement"]["all"] = cal.rank_agreement(runs["study"], runs["versus"], n_boot=n_boot)
        pub = [d for d in runs["study"] if published.get(d)]
        out["agreement"]["published"] = cal.rank_agreement(
            {d: runs["study"][d] for d in pub},
            {d: v for d, v in runs["versus"].items() if d in pub},
            n_boot=n_boot,
        )
    return out


def _compute_s(ua: dict) -> float:
    """Device-seconds of one run: wall time x the CPUs (on CPU) or GPUs (on CUDA) the trial held."""
    return float(ua.get("wall_s") or 0.0) * float(ua.get("held", 1.0))


def _device(study) -> str:
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return t.user_attrs.get("device") or "cpu"
    return "cpu"


def _unit(device: str) -> str:
    return "GPU-s" if str(device).startswith("cuda") else "core-s"


def _f(v, nd=3):
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def print_summary(summary: dict, name: str) -> None:
    unit = summary["unit"]
    for p, s in summary["protocols"].items():
        n = s["noise"]
        fid = s["fidelity"]
        print(
            f"\nprotocol {p}: {fid.get('num_classes')} classes x {fid.get('max_per_class')} images, width "
            f"{fid.get('width')}, {fid.get('resolution')} px, {fid.get('epochs')} epochs, batch "
            f"{fid.get('batch_size')}, lr {fid.get('lr')}  ({s['runs']} runs)"
        )
        rows = [("design", "runs", "mean", "std", f"{unit}/run")]
        for d, v in sorted(
            s["designs"].items(), key=lambda kv: (not kv[1]["published"], -(kv[1]["mean"] or 0))
        ):
            rows.append((d, str(v["n"]), _f(v["mean"]), _f(v["std"]), f"{v['compute_s']:.0f}"))
        _table(rows)
        for label, nz in (("all designs", n), ("published designs", s.get("noise_published"))):
            if not nz:
                continue
            print(
                f"  {label}: pooled seed std {_f(nz['pooled_std'])} (df {nz['df']}), std of design means "
                f"{_f(nz['std_of_means'])}, SNR {_f(nz['snr'], 2)}; resolvable at 95 %: "
                f"{_f(nz['resolvable_1'])} (one run each), {_f(nz['resolvable_mean'])} (means of {nz['seeds']:g})"
            )
        snr_m = ", ".join(f"{m}: {_f(v, 2)}" for m, v in s["snr_of_mean"].items())
        print(f"  SNR of a mean of m seeds (noise of the means taken out of the signal): {snr_m}")
        print(f"  compute: {s['compute_s_per_run']:.0f} {unit} per run")
    for which, a in summary.get("agreement", {}).items():
        if a.get("tau") is None:
            print(f"\nrank agreement ({which}, {a['n']} designs): too few designs")
            continue
        print(
            f"\nrank agreement study vs versus ({which}, {a['n']} designs, {a['n_boot']} bootstrap draws): "
            f"Kendall tau-b {a['tau']:.2f} [{a['tau_ci'][0]:.2f}, {a['tau_ci'][1]:.2f}], "
            f"Spearman rho {a['rho']:.2f} [{a['rho_ci'][0]:.2f}, {a['rho_ci'][1]:.2f}] (95 % intervals)"
        )
    print(f"\nstored as study {name!r} (user attr 'summary')")


def _table(rows) -> None:
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  " + "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
        if j == 0:
            print("  " + "  ".join("-" * x for x in w))


def main(argv=None) -> int:
    args = parse_args(argv)
    p = prepare(args)  # nothing opened or written up to here
    p["address"], p["bootstrap"], p["quiet"] = args.address, args.bootstrap, args.quiet
    p["stop"] = StopWhen().reset().install()  # Ctrl-C / SIGTERM: the summary, then status 130 / 143
    log = (lambda *_: None) if args.quiet else (lambda m: print(m, flush=True))
    t0 = time.perf_counter()
    p["run_dir"].mkdir(parents=True, exist_ok=True)
    summary = run(p, log)
    print_summary(summary, p["cfg"].name + CALIBRATION_SUFFIX)
    print(f"this run: {summary['ran']} trial(s) in {time.perf_counter() - t0:.0f}s")
    return p["stop"].exit_status()


if __name__ == "__main__":
    cli_main(main)
