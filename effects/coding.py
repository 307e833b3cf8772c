"""A genome as the effects model sees it. Its factors are the global choices and one per stage (the
stage's whole choice as one level: `stage_label`); the model codes each stage as its parts (the
module type at each position, fusion and stage slot, with its options; the reduction r; the
KernelWarehouse budget), each against its baseline ('none' for a module, the most frequent r, the
backbone's default for stem and downsampling), so that a run informs every part it holds; a whole
stage choice is the sum of its parts. The blocks (a seed on one machine and code: effects.runs.block)
are sum-to-zero effects."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from patsy.contrasts import Sum, Treatment

from searchspace.backbones.specs import BACKBONE_SPECS
from searchspace.genome import Genome, Stage

NONE = "none"
_R = re.compile(r"r\d+$")


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
    return " + ".join(parts) or NONE


def stage_parts(stage: str, label: str) -> dict[str, str]:
    """The parts of a stage's whole choice (read back from its `stage_label`): {'s2.after_conv1':
    'dsm:bias=True', 's2.r': 'r2', 's2.fusion': 'iaff', 's2.fusion.r': 'r8', 's2.stage':
    'sda:min_dim=64', 's2.kw': 'b=1'}. Options belong to their module's type; r is a part of its own,
    shared by the stage's block plugins. A part the stage does not have is absent (it is 'none')."""
    out: dict[str, list[str]] = {}
    for item in [] if label == NONE else label.split(" + "):
        if item.startswith("kw b="):
            out.setdefault(f"{stage}.kw", []).append(item[3:])
            continue
        head, *bits = item.split(":")
        type_, position = head.split("@")
        slot = f"{stage}.{position}"
        r_part = f"{slot}.r" if position in ("fusion", "stage") else f"{stage}.r"
        out.setdefault(slot, []).append(":".join([type_, *(b for b in bits if not _R.match(b))]))
        for b in bits:
            if _R.match(b) and b not in out.get(r_part, []):
                out.setdefault(r_part, []).append(b)
    return {part: "+".join(levels) for part, levels in out.items()}


def is_r_part(part: str) -> bool:
    return part.endswith(".r")


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
    """Treatment coding of each part against its baseline, sum-to-zero coding of the blocks (patsy's
    contrasts); `columns` names the design matrix's columns. `factors`/`baselines`/`levels` are the
    whole choices seen (what the effects table, the front and the verdicts speak of); `parts` and
    the part_* fields are what the columns code. A part level that always occurred with another
    (r2 with dsm:bias=True in stage 4 of the placement table; two parts of two stages seen in one run
    alone) has no column: it is `aliased` to that one."""

    factors: list[str]
    baselines: dict[str, str]
    levels: dict[str, list[str]]  # the non-baseline levels seen, per factor
    blocks: list[str]
    parts: dict[str, list[str]]  # per factor, its parts (a global factor, or a whole stage: itself)
    part_baselines: dict[str, str]
    part_levels: dict[str, list[str]]  # per part, the non-baseline levels with a column
    aliased: dict[str, str]  # 'part=level' without a column -> the 'part=level' column it always equals
    whole_stages: bool = False

    @classmethod
    def of(
        cls, factor_rows: Sequence[Mapping[str, str]], blocks: Sequence[str], whole_stages: bool = False
    ) -> Coding:
        """The coding of these rows; whole_stages: one part per stage, its whole choice (the coding
        before stages were split, kept to compare the two: bench/effects_coding.py)."""
        factors = list(factor_rows[0])
        baselines, levels = {}, {}
        for f in factors:
            baselines[f], levels[f] = _baseline([r[f] for r in factor_rows], f)
        split = [_split(r, whole_stages) for r in factor_rows]
        parts = {f: [] for f in factors}
        for row in split:
            for p in row:
                if p not in parts[_owner(p)]:
                    parts[_owner(p)].append(p)
        parts = {f: sorted(ps, key=_part_order) for f, ps in parts.items()}
        part_baselines, part_levels, aliased = {}, {}, {}
        # Columns so far, over every factor: a part level that ran only where another (of any stage)
        # ran, e.g. two parts seen in one run alone, would be an identical column, its split
        # between the two arbitrary.
        kept: list[tuple[str, np.ndarray]] = []
        for ps in parts.values():
            for p in ps:
                values = [row.get(p, NONE) for row in split]
                seen = [v for v in values if v != NONE] if is_r_part(p) else values
                part_baselines[p], candidates = _baseline(seen, p)
                part_levels[p] = []
                for lv in candidates:
                    col = np.array([v == lv for v in values])
                    twin = next((name for name, c in kept if (c == col).all()), None)
                    if twin is None:
                        kept.append((f"{p}={lv}", col))
                        part_levels[p].append(lv)
                    else:
                        aliased[f"{p}={lv}"] = twin
        return cls(
            factors,
            baselines,
            levels,
            sorted(set(blocks), key=_block_order),
            parts,
            part_baselines,
            part_levels,
            aliased,
            whole_stages,
        )

    @property
    def columns(self) -> list[str]:
        """Column names, in the order of the design matrix."""
        cols = ["intercept"]
        cols += [f"{p}={lv}" for f in self.factors for p in self.parts[f] for lv in self.part_levels[p]]
        cols += [f"block[{b}]" for b in self.blocks[:-1]]
        return cols

    def factor_slices(self) -> dict[str, slice]:
        """The columns of each factor (all its parts; and of the blocks, when there are several) in the
        design matrix."""
        out, i = {}, 1
        for f in self.factors:
            width = sum(len(self.part_levels[p]) for p in self.parts[f])
            out[f], i = slice(i, i + width), i + width
        if "block" in self._contrasts:
            out["block"] = slice(i, i + self._contrasts["block"].shape[1])
        return out

    def unknown(self, factors: Mapping[str, str]) -> list[str]:
        """The parts this coding cannot price: a part level never seen, or an aliased one apart from the
        level it always came with (no prediction is possible for them)."""
        split = _split(factors, self.whole_stages)
        out = [f"{p}={lv}" for p, lv in split.items() if p not in self.part_baselines]
        for f in self.factors:
            for p in self.parts[f]:
                lv = split.get(p, NONE)
                known = (
                    lv == self.part_baselines[p] or lv in self.part_levels[p] or (is_r_part(p) and lv == NONE)
                )
                if not known and f"{p}={lv}" not in self.aliased:
                    out.append(f"{p}={lv}")
        for alias, twin in self.aliased.items():
            p, _, lv = alias.partition("=")
            tp, _, tlv = twin.partition("=")
            if (split.get(p, NONE) == lv) != (split.get(tp, NONE) == tlv):
                out.append(f"{alias} apart from {twin}")
        return out

    def row(self, factors: Mapping[str, str], block: str | None = None) -> np.ndarray:
        """One design row; block None: the average block (the block columns are 0)."""
        return self.matrix([factors], None if block is None else [block])[0]

    def matrix(
        self, factor_rows: Sequence[Mapping[str, str]], blocks: Sequence[str] | None = None
    ) -> np.ndarray:
        """The design matrix: an intercept, each part's row of patsy's treatment contrast (against its
        baseline) and the block's row of patsy's sum-to-zero contrast; blocks None: the average block
        (block columns 0). A part level without a column (never seen, or aliased) gets the baseline's
        row: callers ask `unknown` first."""
        split = [_split(r, self.whole_stages) for r in factor_rows]
        cols = [np.ones((len(factor_rows), 1))]
        for f in self.factors:
            for p in self.parts[f]:
                index = self._level_index[p]
                cols.append(self._contrasts[p][[index.get(r.get(p, NONE), 0) for r in split]])
        if "block" in self._contrasts:
            contrast = self._contrasts["block"]
            if blocks is None:
                cols.append(np.zeros((len(factor_rows), contrast.shape[1])))
            else:
                cols.append(contrast[[self.blocks.index(b) for b in blocks]])
        return np.hstack(cols)

    def stage_contrast(self, factor: str, level: str) -> np.ndarray:
        """The row of a whole choice against its factor's baseline, the other factors held: the sum of
        its parts' columns."""
        at = dict(self.baselines)
        return self.row({**at, factor: level}) - self.row(at)

    @cached_property
    def _level_index(self) -> dict[str, dict[str, int]]:
        """Per part, each level's row in its contrast matrix."""
        return {
            p: {lv: i for i, lv in enumerate([self.part_baselines[p], *self.part_levels[p]])}
            for p in self.part_levels
        }

    @cached_property
    def _contrasts(self) -> dict[str, np.ndarray]:
        """Per part, its contrast matrix (one row per level: baseline first, then `part_levels`); for
        the blocks ('block', only with several: one block has no effect), the sum-to-zero one."""
        out = {
            p: Treatment(reference=0).code_without_intercept([self.part_baselines[p], *lvs]).matrix
            for p, lvs in self.part_levels.items()
        }
        if len(self.blocks) > 1:
            out["block"] = Sum().code_without_intercept(self.blocks).matrix
        return out


def _baseline(values: Sequence[str], factor: str) -> tuple[str, list[str]]:
    """(baseline, the other levels sorted): 'none' for a stage or a module, r16 for an r (the default
    of the block plugins and stage modules), the backbone's default stem and downsampling, each where
    seen; else the most frequent level."""
    counts = pd.Series(list(values), dtype=object).value_counts()
    default = {"stem": "standard", "downsampling": "v1.5"}.get(factor, "r16" if is_r_part(factor) else NONE)
    base = default if default in counts.index else counts.index[0]
    return base, sorted(lv for lv in counts.index if lv != base)


def _split(factors: Mapping[str, str], whole_stages: bool) -> dict[str, str]:
    """{part: level} of a genome's factors: a stage's parts (absent ones are 'none'), a global factor
    as itself."""
    out: dict[str, str] = {}
    for f, lv in factors.items():
        out.update(stage_parts(f, lv) if is_stage(f) and not whole_stages else {f: lv})
    return out


def _owner(part: str) -> str:
    return part.split(".")[0]


# A stage's parts in block order: positions, r, fusion (and its r), stage module, KW.
SLOTS = ("after_conv1", "after_conv2", "after_conv3", "after_add", "r", "fusion", "stage", "kw")


def _part_order(part: str) -> tuple:
    """A stage's parts in block order: positions, r, fusion (and its r), stage module, KW."""
    bits = part.split(".")
    slot = bits[1] if len(bits) > 1 else ""
    return (SLOTS.index(slot) if slot in SLOTS else len(SLOTS), part)


def _block_order(b: str) -> tuple:
    """Blocks by seed number, then environment and rung ('10@x' after '2@x')."""
    seed, _, rest = str(b).partition("@")  # a bare seed number is a block too (studies.designed)
    return (int(seed) if seed.lstrip("-").isdigit() else 0, seed, rest)
