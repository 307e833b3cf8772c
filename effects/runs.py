"""The effects model's input: one row per measured run (genome, seed, top-1, costs, kind), from a
benchmark table CSV or from rows a study reader builds, optionally pooled with a prior table's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from searchspace.errors import UserError
from searchspace.genome import Genome
from trainers.environment import UNRECORDED
from trainers.record import Status


@dataclass
class Runs:
    """One row per measured run: key, genome, seed, y (top-1), flops, params, kind ('search',
    'reference' or 'table'), design (catalog name or None), recipe, trial (number or None),
    environment (trainers.environment.key), rung (a fidelity-ladder rung or None) and block: the
    draw a run belongs to, (seed, environment, rung). The same seed on another machine, code version
    or rung is another draw, never a repeat."""

    frame: pd.DataFrame
    source: str  # what was read, for the outputs
    config: dict = field(default_factory=dict)
    target: dict = field(default_factory=dict)
    noise_sd: float | None = None  # a measured run sd (a calibration) for fits whose runs cannot give one
    noise_source: str = ""
    protocols: dict = field(default_factory=dict)  # rung -> its protocol (a table row's JSON), if known

    @property
    def n(self) -> int:
        return len(self.frame)

    def with_prior(self, prior: Runs) -> Runs:
        """These runs and a table's of the same protocol. The prior's rows keep their own blocks: a
        seed shares a block only with runs of the same environment (same machine kind and code:
        the same initialisation and batch order, bit for bit); where both hold a genome in one
        block, the fit keeps the first run, this study's."""
        frame = pd.concat([self.frame, prior.frame], ignore_index=True)
        return replace(self, frame=frame, source=f"{self.source} with {_prior_text(self, prior)}")

    def common_recipe(self) -> pd.DataFrame:
        """The runs the model compares: those trained with the common recipe."""
        return self.frame[self.frame["recipe"].fillna("common") == "common"]


def _prior_text(study: Runs, prior: Runs) -> str:
    """How many prior runs, and how many ran in another environment than the study's (blocks of their
    own) or in the same (shared blocks: a genome both ran in one block counts once, the study's)."""
    here = set(study.frame["environment"])
    elsewhere = prior.frame[~prior.frame["environment"].isin(here)]
    text = f"{prior.n} prior run(s) of {prior.source}"
    if len(elsewhere):
        envs = ", ".join(sorted(set(elsewhere["environment"])))
        text += f", {len(elsewhere)} from another environment ({envs}): separate blocks, none dropped"
        text += " as a repeat of this run's"
    if len(elsewhere) < prior.n:
        text += f", {prior.n - len(elsewhere)} from this run's: the same blocks"
    return text


def runs_frame(rows: list[dict]) -> pd.DataFrame:
    """The runs' frame from row dicts (columns as in Runs), finite top-1 only."""
    cols = ["key", "genome", "seed", "y", "flops", "params", "kind", "design", "recipe", "trial"]
    frame = pd.DataFrame(rows, columns=[*cols, "environment", "rung"])
    frame["environment"] = frame["environment"].fillna(UNRECORDED)
    frame["rung"] = frame["rung"].astype(object).where(frame["rung"].notna(), None)
    frame["block"] = [block(s, e, r) for s, e, r in zip(frame["seed"], frame["environment"], frame["rung"])]
    return frame[np.isfinite(frame["y"].astype(float))].reset_index(drop=True)


def block(seed: int, environment: str = UNRECORDED, rung: str | None = None) -> str:
    """The name of a draw: 'seed@environment', '@rung' appended on a ladder."""
    return f"{int(seed)}@{environment}" + (f"@{rung}" if rung else "")


def runs_from_table(path: str | Path, seeds: Sequence[int] | None = None) -> Runs:
    """The ok rows of a benchmark table CSV (studies/tables/*.csv), optionally of some seeds only."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--table {str(path)!r}: no such file")
    try:
        t = pd.read_csv(p)
    except Exception as e:  # pandas raises several types for a file that is not a CSV
        raise UserError(f"--table {str(path)!r}: not a readable CSV ({type(e).__name__})") from None
    need = {"genome", "seed", "top1", "status"}
    if not need <= set(t.columns):
        raise UserError(f"--table {str(path)!r}: not a benchmark table (needs columns {sorted(need)})")
    t = t[t["status"] == Status.OK]
    if seeds is not None:
        t = t[t["seed"].isin(list(seeds))]
    flops_col = next((c for c in ("flops_paper", "flops") if c in t), None)
    params_col = next((c for c in ("params_paper", "params") if c in t), None)
    genomes: dict[str, Genome] = {}
    rows = []
    for r in t.itertuples(index=False):
        g = genomes.get(r.genome) or genomes.setdefault(r.genome, Genome.from_json(r.genome))
        rows.append(
            {
                "key": g.key,
                "genome": g,
                "seed": int(r.seed),
                "y": float(r.top1),
                "flops": float(getattr(r, flops_col)) if flops_col else np.nan,
                "params": float(getattr(r, params_col)) if params_col else np.nan,
                "kind": "table",
                "design": r.design if isinstance(getattr(r, "design", None), str) else None,
                "recipe": "common",
                "trial": None,
                "environment": _text(getattr(r, "environment", None)) or UNRECORDED,
                "rung": _text(getattr(r, "rung", None)),
            }
        )
    protocols = {}
    if {"rung", "protocol"} <= set(t.columns):
        protocols = {
            str(r): p_ for r, p_ in t.groupby("rung")["protocol"].first().items() if isinstance(p_, str)
        }
    return Runs(runs_frame(rows), f"table {p.name}", protocols=protocols)


def _text(v) -> str | None:
    return v if isinstance(v, str) and v else None
