"""How much a proxy's top-1 can be trusted: seed noise, signal, resolvable differences, rank agreement.

The statistics vocabulary of analysis/ (import it from here): intervals at LEVEL = 0.95, two-sided,
t-based with the residual degrees of freedom (`t_quantile((1 + LEVEL) / 2, df)`); quantiles, ranks and
rank correlations come from scipy.stats (t.ppf, norm.ppf, rankdata, kendalltau variant b, spearmanr).

Pure functions on plain numbers (design name -> the top-1 of each seed), plus a reader for a stored
calibration study (`<study>.calibration`, written by `python -m studies.calibrate`).

Definitions (S_i seeds of design i, D designs):
- design mean and std: the mean and the sample std (ddof 1) of a design's seeds.
- pooled seed std: sqrt(sum_i (S_i - 1) s_i^2 / sum_i (S_i - 1)), with df = sum_i (S_i - 1) degrees of
  freedom: the noise of one run, the same for every design by assumption.
- std of design means: the sample std (ddof 1) of the D design means.
- SNR: std of design means / pooled seed std (single-run signal-to-noise, as the issue measured it).
  The design means still carry noise of variance pooled^2 / S, so `signal_std` subtracts it
  (the one-way ANOVA estimate of the between-design std, clipped at 0) and `snr_of_mean(m)` is
  signal_std / (pooled / sqrt(m)): the SNR of the estimate a study uses when it averages m seeds.
- resolvable difference: the smallest difference between a mean of n_a runs and a mean of n_b runs
  that a two-sided two-sample t test with the pooled std rejects at 95 %:
      t_{0.975, df} * pooled * sqrt(1/n_a + 1/n_b)
  (df of the pooled std; n_a = n_b = 1 compares two single runs).
- Kendall's tau-b (scipy.stats.kendalltau: ties in either ranking counted as in Kendall 1945) and
  Spearman's rho (scipy.stats.spearmanr: Pearson on average ranks) of the design means of two protocols, with percentile bootstrap intervals: each
  replicate draws D designs with replacement and, for each drawn design, its seeds with replacement
  in each protocol, then recomputes the means (a seeded numpy Generator, so intervals reproduce).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from effects import LEVEL  # one interval level for the effects model and the checks here
from trainers.record import Status

CALIBRATION_SUFFIX = ".calibration"


# -- quantiles ---------------------------------------------------------------------------------
def normal_quantile(p: float) -> float:
    return float(stats.norm.ppf(p))


def t_quantile(p: float, df: float) -> float:
    """The p-quantile (p > 0.5) of Student's t with df degrees of freedom (df = inf: the normal)."""
    if not 0.5 < p < 1 or not df > 0:
        raise ValueError(f"t_quantile: need 0.5 < p < 1 and df > 0, got p={p}, df={df}")
    return float(stats.t.ppf(p, df))


# -- noise and signal ----------------------------------------------------------------------------
def design_stats(runs: Mapping[str, Sequence[float]]) -> dict[str, dict]:
    """{design: {"n", "mean", "std"}} (std: ddof 1, None for a single run)."""
    out = {}
    for name, xs in runs.items():
        a = np.asarray([x for x in xs if x is not None and math.isfinite(x)], dtype=float)
        out[name] = {
            "n": len(a),
            "mean": float(a.mean()) if len(a) else None,
            "std": float(a.std(ddof=1)) if len(a) > 1 else None,
        }
    return out


def pooled_std(runs: Mapping[str, Sequence[float]]) -> tuple[float | None, int]:
    """(pooled within-design std, its degrees of freedom); (None, 0) without any repeated design."""
    ss, df = 0.0, 0
    for xs in runs.values():
        a = np.asarray(xs, dtype=float)
        if len(a) > 1:
            ss += float(((a - a.mean()) ** 2).sum())
            df += len(a) - 1
    return (math.sqrt(ss / df), df) if df else (None, 0)


def std_of_means(runs: Mapping[str, Sequence[float]]) -> float | None:
    means = [float(np.mean(xs)) for xs in runs.values() if len(xs)]
    return float(np.std(means, ddof=1)) if len(means) > 1 else None


def resolvable_difference(
    pooled: float, df: float, n_a: int = 1, n_b: int = 1, level: float = LEVEL
) -> float:
    """t_{(1+level)/2, df} * pooled * sqrt(1/n_a + 1/n_b): see the module docstring."""
    return t_quantile((1 + level) / 2, df) * pooled * math.sqrt(1 / n_a + 1 / n_b)


@dataclass
class Noise:
    """What one protocol's repeated runs say about its top-1 (see the module docstring)."""

    designs: dict  # {name: {"n", "mean", "std"}}
    pooled_std: float | None
    df: int
    std_of_means: float | None
    snr: float | None  # std of means / pooled std
    signal_std: float | None  # between-design std with the noise of the means taken out
    seeds: float  # the typical number of seeds per design (harmonic mean)
    resolvable_1: float | None  # two single runs
    resolvable_mean: float | None  # two means of `seeds` runs
    extra: dict = field(default_factory=dict)

    def snr_of_mean(self, m: int) -> float | None:
        """Signal-to-noise of a mean of m seeds: signal_std / (pooled / sqrt(m))."""
        if self.signal_std is None or not self.pooled_std:
            return None
        return self.signal_std / (self.pooled_std / math.sqrt(m))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Noise:
        return cls(**d)


def noise(runs: Mapping[str, Sequence[float]], level: float = LEVEL) -> Noise:
    runs = {k: [float(x) for x in v if x is not None and math.isfinite(x)] for k, v in runs.items()}
    runs = {k: v for k, v in runs.items() if v}
    pooled, df = pooled_std(runs)
    som = std_of_means(runs)
    counts = [len(v) for v in runs.values()]
    seeds = round(len(counts) / sum(1 / c for c in counts), 9) if counts else 0.0
    snr = som / pooled if som is not None and pooled else None
    signal = None
    if som is not None and pooled is not None:
        signal = math.sqrt(max(0.0, som**2 - pooled**2 / seeds))
    res1 = resolvable_difference(pooled, df, 1, 1, level) if pooled is not None else None
    resm = resolvable_difference(pooled, df, seeds, seeds, level) if pooled is not None else None
    return Noise(design_stats(runs), pooled, df, som, snr, signal, seeds, res1, resm)


# -- rank agreement ------------------------------------------------------------------------------
def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (scipy.stats.kendalltau, variant "b"); NaN when either ranking is all ties."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError("kendall_tau_b: x and y differ in length")
    return float(_kendall_rows(x[None, :], y[None, :])[0])


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing the mean of the ranks they span (scipy.stats.rankdata)."""
    return stats.rankdata(np.asarray(x, dtype=float), method="average")


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (scipy.stats.spearmanr: Pearson on average ranks); NaN when either is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(np.asarray(x, dtype=float), np.asarray(y, dtype=float)).statistic)


def _kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """tau-b of each row pair; the asymptotic method skips the exact p-value, which is not used."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.atleast_1d(stats.kendalltau(x, y, variant="b", method="asymptotic", axis=1).statistic)


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """rho of each row pair: Pearson on each row's average ranks (spearmanr of 2-D input would
    correlate every column with every other)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        rx, ry = stats.rankdata(x, axis=1), stats.rankdata(y, axis=1)
        return np.atleast_1d(stats.pearsonr(rx, ry, axis=1).statistic)


def rank_agreement(
    a: Mapping[str, Sequence[float]],
    b: Mapping[str, Sequence[float]],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """Kendall's tau-b and Spearman's rho between the design means of protocols a and b (designs in
    both), each with a percentile bootstrap interval (see the module docstring)."""
    names = sorted(k for k in a if k in b and len(a[k]) and len(b[k]))
    out = {"designs": names, "n": len(names), "level": level, "n_boot": n_boot, "seed": seed}
    if len(names) < 3:
        return out | {"tau": None, "tau_ci": None, "rho": None, "rho_ci": None}
    ma, mb = [float(np.mean(a[k])) for k in names], [float(np.mean(b[k])) for k in names]
    rng = np.random.default_rng(seed)
    boot_a, boot_b = [], []
    for _ in range(n_boot):
        pick = rng.integers(0, len(names), len(names))
        xa = [
            float(np.mean(rng.choice(np.asarray(a[names[p]], dtype=float), len(a[names[p]])))) for p in pick
        ]
        xb = [
            float(np.mean(rng.choice(np.asarray(b[names[p]], dtype=float), len(b[names[p]])))) for p in pick
        ]
        boot_a.append(xa)
        boot_b.append(xb)
    taus, rhos = [], []
    if n_boot > 0:
        boot_a, boot_b = np.asarray(boot_a), np.asarray(boot_b)
        taus, rhos = _kendall_rows(boot_a, boot_b), _spearman_rows(boot_a, boot_b)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def ci(v):
        v = np.asarray(v)
        v = v[np.isfinite(v)]
        return [float(x) for x in np.percentile(v, q)] if len(v) else None

    return out | {
        "tau": kendall_tau_b(ma, mb),
        "tau_ci": ci(taus),
        "rho": spearman_rho(ma, mb),
        "rho_ci": ci(rhos),
    }


# -- reading a stored calibration ----------------------------------------------------------------
def load_calibration(storage, study_name: str) -> dict | None:
    """The summary `studies.calibrate` stored on '<study>.calibration' (study user attr "summary"),
    or None when the storage has no calibration of that study."""
    import optuna

    name = study_name if study_name.endswith(CALIBRATION_SUFFIX) else study_name + CALIBRATION_SUFFIX
    if not any(s.study_name == name for s in storage.get_all_studies()):
        return None
    summary = optuna.load_study(study_name=name, storage=storage).user_attrs.get("summary")
    return summary if isinstance(summary, dict) else None


def protocol_noise(summary: dict | None, protocol: str = "study") -> Noise | None:
    """The Noise of one protocol of a stored calibration summary."""
    if not summary:
        return None
    p = (summary.get("protocols") or {}).get(protocol)
    return Noise.from_dict(p["noise"]) if p and p.get("noise") else None


def study_noise(df) -> tuple[Noise | None, str]:
    """The noise of a loaded study's top-1 (analysis.load_study) and where it comes from:
    its stored calibration when that was run under the study's own fidelity, else genomes the study
    ran under several seeds (completed runs of one genome key with distinct seeds, searched and
    reference trials together), else (None, "none")."""
    summary = df.attrs.get("calibration")
    p = ((summary or {}).get("protocols") or {}).get("study")
    fid = df.attrs.get("fidelity")
    if (
        p
        and p.get("noise")
        and p["noise"].get("pooled_std") is not None
        and (not fid or p.get("fidelity") == fid)
    ):
        n = Noise.from_dict(p["noise"])
        return n, f"calibration ({sum(d['n'] for d in n.designs.values())} runs of {len(n.designs)} designs)"
    if not len(df) or "genome_key" not in df or "seed" not in df:
        return None, "none"
    done = df[
        (df["state"] == "COMPLETE")
        & (df["status"] == Status.OK)
        & df["genome_key"].notna()
        & df["seed"].notna()
    ]
    runs = {}
    for key, part in done.groupby("genome_key"):
        part = part.drop_duplicates("seed")
        if len(part) > 1:
            runs[key] = part["top1"].astype(float).tolist()
    n = noise(runs) if runs else None
    if n is None or n.pooled_std is None:
        return None, "none"
    return n, f"repeated seeds ({len(runs)} genome(s))"


def stage_map_sizes(backbone: str, resolution: int, stem: str = "standard") -> list[int] | None:
    """The feature-map side each stage of a ResNet sees at `resolution` (None for other families):
    the ImageNet stems divide by 4 (stride-2 conv, stride-2 max-pool), the CIFAR stem by 1, then
    every later stage halves (padded stride 2: ceil)."""
    from searchspace.backbones.specs import BACKBONE_SPECS

    b = BACKBONE_SPECS.get(backbone)
    if b is None or b.family != "resnet":
        return None
    h = resolution if stem == "cifar" else math.ceil(math.ceil(resolution / 2) / 2)
    sizes = [h]
    for _ in range(b.num_stages - 1):
        h = math.ceil(h / 2)
        sizes.append(h)
    return sizes


__all__ = [
    "Noise",
    "study_noise",
    "stage_map_sizes",
    "noise",
    "design_stats",
    "pooled_std",
    "std_of_means",
    "resolvable_difference",
    "t_quantile",
    "kendall_tau_b",
    "spearman_rho",
    "average_ranks",
    "rank_agreement",
    "load_calibration",
    "protocol_noise",
]
