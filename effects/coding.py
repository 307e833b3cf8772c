"""A genome as the effects model sees it: one factor per stage (the stage's whole choice as one
level) and the global choices, each coded against its baseline ('none' for a stage, the backbone's
default for stem and downsampling); seeds as sum-to-zero blocks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from searchspace.backbones.specs import BACKBONE_SPECS
from searchspace.genome import Genome, Stage


def stage_label(stage: Stage) -> str:
    """A stage's whole choice as one level, in the menu-item grammar ('type@position:rR:opt=v'),
    its parts joined by ' + '; 'none' for a plain stage."""

    def item(p, position=None):
        bits = [f"{p.type}@{position or p.position}"]
        if p.r is not None:
            bits.append(f"r{p.r}")
        bits += [f"{k}={v}" for k, v in sorted(dict(p.options).items())]
        return ":".join(bits)

    parts = [item(p) for p in stage.plugins]
    parts += [item(p) for p in (stage.fusion, stage.stage_module) if p is not None]
    if stage.kw is not None:
        parts.append(f"kw b={stage.kw:g}")
    return " + ".join(parts) or "none"


def factors_of(genome: Genome) -> dict[str, str]:
    """{factor: level}: stem, downsampling, then s1..sS (the stage labels)."""
    g = genome.validate()
    spec = BACKBONE_SPECS[g.backbone]
    out = {"stem": g.stem or spec.stems[0], "downsampling": g.downsampling or spec.downsampling[0]}
    out.update({f"s{i}": stage_label(s) for i, s in enumerate(g.stages, start=1)})
    return out


def is_stage(factor: str) -> bool:
    return factor[0] == "s" and factor[1:].isdigit()


@dataclass
class Coding:
    """Treatment coding of each factor against its baseline, sum-to-zero coding of the seeds."""

    factors: list[str]
    baselines: dict[str, str]
    levels: dict[str, list[str]]  # the non-baseline levels seen, per factor
    seeds: list[int]

    @classmethod
    def of(cls, factor_rows: Sequence[Mapping[str, str]], seeds: Sequence[int]) -> Coding:
        factors = list(factor_rows[0])
        baselines, levels = {}, {}
        for f in factors:
            counts = pd.Series([r[f] for r in factor_rows]).value_counts()
            default = "none" if is_stage(f) else None
            base = default if default in counts.index else counts.index[0]
            if f == "stem" and "standard" in counts.index:
                base = "standard"
            if f == "downsampling" and "v1.5" in counts.index:
                base = "v1.5"
            baselines[f] = base
            levels[f] = sorted(lv for lv in counts.index if lv != base)
        return cls(factors, baselines, levels, sorted(set(int(s) for s in seeds)))

    @property
    def columns(self) -> list[str]:
        cols = ["intercept"]
        cols += [f"{f}={lv}" for f in self.factors for lv in self.levels[f]]
        cols += [f"seed[{s}]" for s in self.seeds[:-1]]
        return cols

    def factor_slices(self) -> dict[str, slice]:
        out, i = {}, 1
        for f in self.factors:
            out[f] = slice(i, i + len(self.levels[f]))
            i += len(self.levels[f])
        if len(self.seeds) > 1:
            out["seed"] = slice(i, i + len(self.seeds) - 1)
        return out

    def unknown(self, factors: Mapping[str, str]) -> list[str]:
        """The factor levels this coding has never seen (no prediction is possible for them)."""
        return [
            f"{f}={factors.get(f)}"
            for f in self.factors
            if factors.get(f) != self.baselines[f] and factors.get(f) not in self.levels[f]
        ]

    def row(self, factors: Mapping[str, str], seed: int | None = None) -> np.ndarray:
        """One design row; seed None: the average seed (the seed columns are 0)."""
        x = [1.0]
        for f in self.factors:
            x += [1.0 if factors.get(f) == lv else 0.0 for lv in self.levels[f]]
        if len(self.seeds) > 1:
            last = self.seeds[-1]
            x += [
                0.0 if seed is None else (1.0 if seed == s else -1.0 if seed == last else 0.0)
                for s in self.seeds[:-1]
            ]
        return np.asarray(x)

    def matrix(self, factor_rows: Sequence[Mapping[str, str]], seeds: Sequence[int]) -> np.ndarray:
        return np.vstack([self.row(f, int(s)) for f, s in zip(factor_rows, seeds)])
