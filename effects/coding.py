"""A genome as the effects model sees it: one factor per stage (the stage's whole choice as one
level) and the global choices, each coded against its baseline ('none' for a stage, the backbone's
default for stem and downsampling); the blocks (a seed on one machine and code: effects.runs.block)
as sum-to-zero effects."""

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
    """Treatment coding of each factor against its baseline, sum-to-zero coding of the blocks (patsy's
    contrasts); `columns` names the design matrix's columns."""

    factors: list[str]
    baselines: dict[str, str]
    levels: dict[str, list[str]]  # the non-baseline levels seen, per factor
    blocks: list[str]

    @classmethod
    def of(cls, factor_rows: Sequence[Mapping[str, str]], blocks: Sequence[str]) -> Coding:
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
        return cls(factors, baselines, levels, sorted(set(blocks), key=_block_order))

    @property
    def columns(self) -> list[str]:
        """Column names, in the order of the design matrix."""
        cols = ["intercept"]
        cols += [f"{f}={lv}" for f in self.factors for lv in self.levels[f]]
        cols += [f"block[{b}]" for b in self.blocks[:-1]]
        return cols

    def factor_slices(self) -> dict[str, slice]:
        """The columns of each factor (and of the blocks, when there are several) in the design matrix."""
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

    def row(self, factors: Mapping[str, str], block: str | None = None) -> np.ndarray:
        """One design row; block None: the average block (the block columns are 0)."""
        return self.matrix([factors], None if block is None else [block])[0]

    def matrix(
        self, factor_rows: Sequence[Mapping[str, str]], blocks: Sequence[str] | None = None
    ) -> np.ndarray:
        """The design matrix: an intercept, each factor's row of patsy's treatment contrast (against
        its baseline) and the block's row of patsy's sum-to-zero contrast; blocks None: the average
        block (block columns 0). A level the coding never saw gets the baseline's row (no column of its own):
        callers ask `unknown` first."""
        cols = [np.ones((len(factor_rows), 1))]
        for f in self.factors:
            index = self._level_index[f]
            cols.append(self._contrasts[f][[index.get(r.get(f), 0) for r in factor_rows]])
        if "block" in self._contrasts:
            contrast = self._contrasts["block"]
            if blocks is None:
                cols.append(np.zeros((len(factor_rows), contrast.shape[1])))
            else:
                cols.append(contrast[[self.blocks.index(b) for b in blocks]])
        return np.hstack(cols)

    @cached_property
    def _level_index(self) -> dict[str, dict[str, int]]:
        """Per factor, each level's row in its contrast matrix."""
        return {f: {lv: i for i, lv in enumerate([self.baselines[f], *self.levels[f]])} for f in self.factors}

    @cached_property
    def _contrasts(self) -> dict[str, np.ndarray]:
        """Per factor, its contrast matrix (one row per level: baseline first, then `levels`); for the
        blocks ('block', only with several: one block has no effect), the sum-to-zero one."""
        out = {
            f: Treatment(reference=0).code_without_intercept([self.baselines[f], *self.levels[f]]).matrix
            for f in self.factors
        }
        if len(self.blocks) > 1:
            out["block"] = Sum().code_without_intercept(self.blocks).matrix
        return out


def _block_order(b: str) -> tuple:
    """Blocks by seed number, then environment and rung ('10@x' after '2@x')."""
    seed, _, rest = b.partition("@")
    return (int(seed) if seed.lstrip("-").isdigit() else 0, seed, rest)
