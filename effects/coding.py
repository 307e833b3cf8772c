"""A genome as the effects model sees it: one factor per stage (the stage's whole choice as one
level) and the global choices, each coded against its baseline ('none' for a stage, the backbone's
default for stem and downsampling); seeds as sum-to-zero blocks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from patsy.contrasts import Sum, Treatment

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
    """Treatment coding of each factor against its baseline, sum-to-zero coding of the seeds (patsy's
    contrasts); `columns` names the design matrix's columns."""

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
        """Column names, in the order of the design matrix."""
        cols = ["intercept"]
        cols += [f"{f}={lv}" for f in self.factors for lv in self.levels[f]]
        cols += [f"seed[{s}]" for s in self.seeds[:-1]]
        return cols

    def factor_slices(self) -> dict[str, slice]:
        """The columns of each factor (and of the seeds, when there are several) in the design matrix."""
        out, i = {}, 1
        for f, block in self._contrasts.items():
            out[f] = slice(i, i + block.shape[1])
            i += block.shape[1]
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
        return self.matrix([factors], None if seed is None else [seed])[0]

    def matrix(
        self, factor_rows: Sequence[Mapping[str, str]], seeds: Sequence[int] | None = None
    ) -> np.ndarray:
        """The design matrix: an intercept, each factor's row of patsy's treatment contrast (against
        its baseline) and the seed's row of patsy's sum-to-zero contrast; seeds None: the average seed
        (seed columns 0). A level the coding never saw gets the baseline's row (no column of its own):
        callers ask `unknown` first."""
        cols = [np.ones((len(factor_rows), 1))]
        for f in self.factors:
            index = self._level_index[f]
            cols.append(self._contrasts[f][[index.get(r.get(f), 0) for r in factor_rows]])
        if "seed" in self._contrasts:
            block = self._contrasts["seed"]
            if seeds is None:
                cols.append(np.zeros((len(factor_rows), block.shape[1])))
            else:
                cols.append(block[[self.seeds.index(int(s)) for s in seeds]])
        return np.hstack(cols)

    @cached_property
    def _level_index(self) -> dict[str, dict[str, int]]:
        """Per factor, each level's row in its contrast matrix."""
        return {f: {lv: i for i, lv in enumerate([self.baselines[f], *self.levels[f]])} for f in self.factors}

    @cached_property
    def _contrasts(self) -> dict[str, np.ndarray]:
        """Per factor, its contrast matrix (one row per level: baseline first, then `levels`); per seed
        ('seed', only with several seeds: one seed has no block), the sum-to-zero one."""
        out = {
            f: Treatment(reference=0).code_without_intercept([self.baselines[f], *self.levels[f]]).matrix
            for f in self.factors
        }
        if len(self.seeds) > 1:
            out["seed"] = Sum().code_without_intercept(self.seeds).matrix
        return out
