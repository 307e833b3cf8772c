"""One self-contained HTML report of a study.

    python -m analysis.report RUN_DIR_OR_STORAGE [--study NAME] [--out report.html]

Plotly's JavaScript is inlined once in <head>, so the file opens offline. The file is written to a
temporary name next to the target and renamed, so a reader never sees half a report.
"""

from __future__ import annotations

import html
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import plotly.offline

from effects import LEVEL, Effects, fidelity_lines, model_lines
from searchspace import catalog
from searchspace.cli import argument_parser, cli_main
from searchspace.errors import UserError

from . import metrics, plots
from .effects import of_study
from .load import completed, load_study, objectives_of
from .pareto import hypervolume_history, pareto_front
from .rediscovery import beside_single_runs, rediscovery

CSS = """body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table.t{border-collapse:collapse;font-size:12px;margin:8px 0}
table.t td,table.t th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
table.t th{background:#f4f4f4}.note{color:#666;font-size:13px}h3{font-size:15px;margin-top:24px}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:12px}
dl.meta dt{font-weight:600}dl.meta dd{margin:0;font-family:monospace}
table.t td:last-child{font-size:11px;min-width:240px}
nav.toc{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #ddd;font-size:14px;z-index:10}
h2,h3{scroll-margin-top:48px}pre{white-space:pre-wrap}details summary{cursor:pointer;color:#1f5fa8;margin:6px 0}"""


COLLAPSE_ROWS = 30  # longer tables fold away, so the report stays navigable


def _table(df: pd.DataFrame) -> str:
    if df.empty:
        return '<p class="note">(none)</p>'
    body = (
        '<div style="overflow-x:auto">'
        + df.to_html(index=False, classes="t", border=0, na_rep="", float_format=lambda v: f"{v:.4g}")
        + "</div>"
    )
    if len(df) <= COLLAPSE_ROWS:
        return body
    return f"<details><summary>{len(df)} rows: show the table</summary>{body}</details>"


def _cost_units(df: pd.DataFrame) -> pd.DataFrame:
    """Scaled metrics (analysis.metrics: costs in G / M; raw counts are unreadable in a table), the unit
    in the header."""
    out = df.copy()
    for c in out.columns:
        base = c.removeprefix("published_").removesuffix("_proxy").removesuffix("_nearest")
        m = metrics.get(base)
        if m is not None and m.scaled:
            out[c] = pd.to_numeric(out[c], errors="coerce") / m.scale
            out = out.rename(columns={c: f"{c} ({m.unit})"})
    return out


def reference_recipe_choice(df: pd.DataFrame) -> str:
    """The study's [references] recipe as stored with its config; "common" for studies stored before
    the choice existed (every design then trained with the common recipe)."""
    refs = (df.attrs.get("config") or {}).get("references") or {}
    return refs.get("recipe") or "common"


def rediscovery_display(red: pd.DataFrame) -> pd.DataFrame:
    """The rediscovery table as shown: empty lists blank, long genome text last."""
    if red.empty:
        return red
    out = red.drop(columns=["in_space_reason", "genome_key", "design_genome"], errors="ignore").copy()
    for c in ("equalled_by", "sampled"):
        out[c] = out[c].map(lambda v: ", ".join(map(str, v)) if v else "")
    out["evaluated"] = out["evaluated"].map({True: "yes", False: "no"})
    if "recipe" in out:
        out["recipe"] = out["recipe"].map(lambda v: v if isinstance(v, str) else "")

    def published(r):  # one readable cell: top-1 @ FLOPs (source)
        if r["published_top1"] is None or r["published_top1"] != r["published_top1"]:
            return ""
        m = metrics.get("flops")
        flops = (
            f" @ {r['published_flops'] / m.scale:.3f} {m.unit}"
            if r["published_flops"] == r["published_flops"] and r["published_flops"] is not None
            else ""
        )
        return f"{r['published_top1']:g}{flops} ({r['published_source']})"

    out["published ImageNet-1K"] = red.apply(published, axis=1)
    out = out.drop(
        columns=["published_top1", "published_flops", "published_params", "published_source"], errors="ignore"
    )
    cols = [c for c in out.columns if c not in ("nearest_genome", "published ImageNet-1K")]
    return _cost_units(out[cols + ["published ImageNet-1K", "nearest_genome"]])


def calibration_section(df: pd.DataFrame) -> list[str]:
    """How sure the proxy's top-1 is: the stored calibration (studies.calibrate), else repeated
    seeds, else a warning; and the feature-map sizes the proxy's modules saw against the target's."""
    from .calibration import stage_map_sizes, study_noise

    parts = []
    fid, target = df.attrs.get("fidelity") or {}, df.attrs.get("target") or {}
    backbone = target.get("backbone")
    proxy = stage_map_sizes(backbone, fid["resolution"]) if backbone and fid.get("resolution") else None
    full = stage_map_sizes(backbone, target["resolution"]) if backbone and target.get("resolution") else None
    if proxy and full:
        parts.append(
            f"<p>Feature maps per stage (standard stem): {'/'.join(map(str, proxy))} at the proxy's "
            f"{fid['resolution']} px, {'/'.join(map(str, full))} on the target at {target['resolution']} px. "
            "Spatial modules (DSM/DAM, MSCA's DCT frequencies, MSA's local branch) compute on the "
            "proxy's maps, not the target's.</p>"
        )
    noise, source = study_noise(df)
    summary = df.attrs.get("calibration")
    if noise is None:
        parts.append(
            '<p class="note">No noise measurement: this storage holds no calibration of the study\'s '
            "protocol and no genome ran under several seeds, so differences in top-1 are taken at face "
            "value. Run <code>python -m studies.calibrate NAME</code> to measure the seed noise.</p>"
        )
        return parts
    parts.append(
        f"<p>Top-1 noise ({html.escape(source)}): pooled seed std {noise.pooled_std:.4f} on {noise.df} "
        f"degrees of freedom; std of design means {_g(noise.std_of_means)}; single-run signal-to-noise "
        f"{_g(noise.snr)}. Two single runs differ resolvably (t test, 95 %) only by more than "
        f"{noise.resolvable_1:.4f}: the front's error bars and the rediscovery verdicts use it.</p>"
    )
    for p, s in ((summary or {}).get("protocols") or {}).items():
        rows = pd.DataFrame(
            [
                {
                    "design": d,
                    "runs": v["n"],
                    "mean top-1": v["mean"],
                    "seed std": v["std"],
                    f"{summary.get('unit', 'core-s')} per run": v.get("compute_s"),
                    "published": "yes" if v.get("published") else "",
                }
                for d, v in (s.get("designs") or s["noise"]["designs"]).items()
            ]
        )
        rows = rows.sort_values("mean top-1", ascending=False)
        n = s["noise"]
        parts += [
            f"<h3>protocol {html.escape(p)}</h3><p class='note'>{html.escape(str(s.get('fidelity')))}</p>",
            _table(rows),
            f"<p>pooled seed std {_g(n['pooled_std'])}, std of design means {_g(n['std_of_means'])}, SNR "
            f"{_g(n['snr'])}; resolvable difference {_g(n['resolvable_1'])} (single runs), "
            f"{_g(n['resolvable_mean'])} (means of {n['seeds']:g}).</p>",
        ]
    for which, a in ((summary or {}).get("agreement") or {}).items():
        if a.get("tau") is not None:
            parts.append(
                f"<p>Rank agreement study vs versus protocol ({which}, {a['n']} designs): Kendall tau-b "
                f"{a['tau']:.2f} [{a['tau_ci'][0]:.2f}, {a['tau_ci'][1]:.2f}], Spearman rho {a['rho']:.2f} "
                f"[{a['rho_ci'][0]:.2f}, {a['rho_ci'][1]:.2f}] (95 % bootstrap intervals).</p>"
            )
    return parts


def answer_section(e: Effects | None, red: pd.DataFrame, single: int) -> list[str]:
    """The model's answer, first: its front and its verdicts on the published designs, each beside
    the single-run verdict with which to believe and why. `single`: completed searched runs."""
    parts = [
        '<p class="note">Every completed run (references included) pooled through one additive model '
        '(<a href="#fit">its effects and checks</a>), so each prediction carries an interval. The '
        'observed front of single runs is <a href="#single">further down</a>: its best points are the '
        "luckiest of many noisy runs (winner's curse). Two intervals: mean_low/mean_high, where the "
        "genome's mean top-1 lies; run_low/run_high, where one new run of it would land (run noise and "
        "the spread of seed blocks included).</p>"
    ]
    front = e.front.assign(genome=[g.summary() for g in e.front["genome"]])
    parts += [
        _fig(plots.model_front_figure(e.front, e.designs, LEVEL), "modelfront"),
        f"<h3>Model front over {html.escape(e.coverage)}</h3>",
        _table(
            _cost_units(
                front[
                    [
                        "key",
                        "predicted",
                        "low",
                        "high",
                        "run_low",
                        "run_high",
                        "flops",
                        "params",
                        "evaluated",
                        "genome",
                    ]
                ]
                .rename(columns=INTERVAL_NAMES)
                .round(4)
            )
        ),
    ]
    if len(e.designs):
        d = beside_single_runs(e, red, single)
        last = ["verdict", "evidence", "single_run", "believe"]
        cols = [c for c in d.columns if c not in VERDICT_HIDDEN and c not in last] + last
        parts += [
            "<h3>Published designs: model verdicts</h3>",
            '<p class="note">verdict: from the model\'s predictions and the interval of the contrast with the '
            "best genome predicted at no more FLOPs; single_run: the verdict of one run of the design "
            'against the searched single runs (<a href="#rediscovery">rediscovery at face value</a>); '
            "believe: which of the two to believe, and why. recipe: how the design was trained here "
            "(common = the study's recipe).</p>",
            _table(_cost_units(d[[c for c in cols if c in d]]).rename(columns=INTERVAL_NAMES).round(3)),
        ]
    return parts


# The two intervals of a prediction, named for what they cover.
INTERVAL_NAMES = {"low": "mean_low", "high": "mean_high"}

# Shown elsewhere in the row (the verdict names the rival and the difference) or too long for it.
VERDICT_HIDDEN = {
    "candidates",  # the verdict says "simultaneous over N candidates"
    "critical_t",
    "genome_key",
    "beaten_by",
    "beaten_by_genome",
    "difference",
    "difference_low",
    "difference_high",
}


def effects_section(e: Effects) -> list[str]:
    """How the model answers: its fit and checks, each choice's effect with its interval, a heatmap."""
    parts = [
        "<pre>" + html.escape("\n".join(model_lines(e))) + "</pre>",
        '<p class="note">Every completed run (references included) pooled through one additive model: '
        "top-1 = intercept + one effect per part of each stage's choice (module type per position, r, "
        "fusion, stage module, KW budget) and per stem and downsampling + a block (one seed on one machine and code) + noise; a stage "
        "choice's effect (the table) is the sum of its parts (the heatmap). Effects are against the "
        "baseline (none / the default), with "
        f"{LEVEL:.0%} intervals of the fit named above (docs/effects.md).</p>",
        _table(e.effects.round(4)),
        _fig(plots.effects_heatmap(e.parts), "effects"),
    ]
    shares = e.fit.checks.get("shares") or {}
    if shares:
        parts.append(
            "<p>Share of top-1 variance over the runs: "
            + html.escape(", ".join(f"{k} {v:.0%}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1])))
            + "</p>"
        )
    return parts


def fidelity_section(e: Effects) -> list[str]:
    """Runs of several rungs: the across-fidelity model (effects.fidelity), its lines and figure."""
    if e.fidelity is None:
        return []
    return [
        "<pre>" + html.escape("\n".join(fidelity_lines(e.fidelity))) + "</pre>",
        _fig(plots.fidelity_figure(e.fidelity), "fidelity"),
    ]


def _g(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def _fig(fig, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"responsive": True})


def single_run_section(df: pd.DataFrame, designs, red: pd.DataFrame) -> list[str]:
    """What the runs showed one by one: the observed front, its hypervolume, where the modules sit,
    the genome fields and the rediscovery verdicts at face value."""
    objs = objectives_of(df)
    names = [o["name"] for o in objs]
    parts = [
        '<p class="note">Each point here is one run, taken at face value. The best of many noisy runs reads '
        "higher than its genome would on average (winner's curse), so this front is optimistic; the "
        '<a href="#answer">model\'s answer</a> above pools every run and is the one to act on.</p>'
    ]
    if completed(df).empty:
        parts.append('<p class="note">No completed searched trials yet: no front or hypervolume.</p>')
    else:
        hist = hypervolume_history(df)
        ref = ", ".join(f"{n}={v:.4g}" for n, v in hist.attrs["reference_point"].items())
        parts += [
            "<h3>Observed Pareto front (single runs)</h3>",
            f"<p>Hypervolume {hist['hypervolume'].iloc[-1]:.6g} "
            f"(normalised {hist['hypervolume_normalized'].iloc[-1]:.4f}) with reference point "
            f'{html.escape(ref)} <span class="note">(reference point: the worst observed value of each '
            "objective over the completed searched trials, so points worst in some objective add no "
            "volume; normalised: divided by the volume of the box between the best observed values and "
            "the reference point)</span></p>",
            _fig(plots.front_figure(df, designs=designs), "front"),
        ]
        front = pareto_front(df)
        parts.append(_table(_cost_units(front[["number", *names, "genome_summary", "genome_key"]])))
        x = plots._axes(objs, None, None)[0]  # the front figure's cost axis
        pubs = plots.published_points(df, designs, x)
        if len(pubs):
            parts += [
                '<p class="note">The lower panel\'s published points, each as its source printed it '
                "(ImageNet-1K, that source's own training recipe):</p>",
                _table(
                    pubs.rename(
                        columns={"x": metrics.label(x), "top1": "top-1 (%)", "short_source": "legend"}
                    )
                ),
            ]
        parts += ["<h3>Hypervolume history</h3>", _fig(plots.hypervolume_figure(hist), "hv")]
        f3 = plots.front3d_figure(df)
        if f3 is not None:
            parts += ["<h3>Three objectives</h3>", _fig(f3, "front3d")]
        parts += [
            "<h3>Where the modules sit on the observed front</h3>",
            _fig(plots.stage_map_figure(df), "stagemap"),
            "<h3>Genome fields (parallel coordinates)</h3>",
            _fig(plots.parallel_figure(df), "parcoords"),
        ]
    parts += [
        '<h3 id="rediscovery">Rediscovery at face value (single runs)</h3>',
        '<p class="note">verdict: "beaten" when a searched trial is no worse in every objective and better '
        'in one, "matched within noise" when it ties every objective, else "missed"; two top-1 values closer '
        "than top1_tolerance (the resolvable difference of two single runs, from the measured noise; 0 when "
        "none is measured) are a tie. The design's proxy result comes from the references study. sampled: "
        "searched trials with the same genome key. nearest: the completed searched genome at the smallest "
        "normalised Hamming distance over stem, downsampling, KW options and, per stage, plugin types / "
        "positions / r / options, fusion, stage module and KW budget (0 = same network). Published numbers "
        "are ImageNet-1K under each paper's own recipe. The model's verdict on each design, and which to "
        'believe, is in <a href="#answer">the answer</a>.</p>',
        f'<p class="note">recipe: what the design\'s proxy result trained with ("common": the searched '
        f"genomes' recipe; \"authors: ...\": its authors' initialisation and regularisers). This study's "
        f"[references] recipe is &quot;{html.escape(reference_recipe_choice(df))}&quot; (docs/effects.md).</p>",
        _table(rediscovery_display(red)),
    ]
    return parts


def build_report(df: pd.DataFrame, designs=None, costs=None, effects: Effects | None = None) -> str:
    """The report's HTML text for a table from load_study (`costs`: how the effects model counts
    genomes it composes, effects.StageCosts; `effects`: the model if already fitted). The model's
    answer comes first, the single runs after it; a contents line links every section."""
    objs = objectives_of(df)
    designs = catalog.designs() if designs is None else list(designs)
    name = df.attrs.get("study_name", "study")
    red = rediscovery(df, designs)
    try:
        e = effects if effects is not None else of_study(df, designs=designs, costs=costs)
        answer = answer_section(e, red, len(completed(df)))
    except UserError as err:
        e, answer = (
            None,
            [
                f'<p class="note">The effects model is not fitted: {html.escape(str(err))}. Until it is, only '
                'the <a href="#single">single runs at face value</a> answer, and they carry no interval.</p>'
            ],
        )
    sections = [
        ("answer", "The answer: the model's front and verdicts", answer),
        *([("fit", "Effects model: what each choice does where", effects_section(e))] if e else []),
        *(
            [("fidelity", "Across fidelity: effects and verdicts at every rung", fidelity_section(e))]
            if e and e.fidelity
            else []
        ),
        ("single", "Single runs at face value", single_run_section(df, designs, red)),
        ("noise", "Proxy noise and calibration", calibration_section(df)),
        ("runs", "Every trial and genome", runs_section(df, e)),
    ]
    head = [
        f"<h1>Study {html.escape(name)}</h1>",
        '<nav class="toc">Contents: '
        + " · ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in sections)
        + "</nav>",
        '<dl class="meta">'
        + "".join(
            f"<dt>{k}</dt><dd>{html.escape(str(v))}</dd>"
            for k, v in [
                ("storage", df.attrs.get("storage")),
                ("objectives", ", ".join(f"{o['name']} ({o['direction']})" for o in objs)),
                ("target (costs are of this network)", df.attrs.get("target")),
                ("fidelity (accuracy is from this proxy)", df.attrs.get("fidelity")),
            ]
        )
        + "</dl>",
    ]
    parts = head + [p for a, t, body in sections for p in (f'<h2 id="{a}">{html.escape(t)}</h2>', *body)]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(name)} — Pareto report</title><style>{CSS}</style>"
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>"
        + "\n".join(parts)
        + f"<p class='note'>Generated {stamp} by analysis.report.</p></body></html>"
    )


def runs_section(df: pd.DataFrame, e: Effects | None) -> list[str]:
    """Every trial by state and, with the model, every genome's prediction beside its measurement."""
    counts = df.groupby(["study", "state", "status"], dropna=False).size().reset_index(name="trials")
    parts = ["<h3>Trials by state</h3>", _table(counts)]
    if e is not None:
        parts += [
            "<h3>Every genome: predicted beside measured</h3>",
            _table(pd.DataFrame(e.to_json()["trials"]).round(4)),
        ]
    return parts


def write_atomic(path: Path, text: str) -> None:
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist")
    # Not mkstemp (always 0600): the umask decides the mode, as for every file of a run (docs/security.md)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_report(
    run_dir_or_storage,
    study_name: str | None = None,
    out_path=None,
    designs=None,
    costs=None,
    effects: Effects | None = None,
) -> Path:
    """Load the study and write the report; returns its path (default RUN_DIR/report.html, or
    ./report.html for a storage URL). `effects`: the study's effects model if already fitted."""
    if out_path is None:
        p = Path(str(run_dir_or_storage))
        out_path = (
            p / "report.html" if "://" not in str(run_dir_or_storage) and p.is_dir() else Path("report.html")
        )
    out_path = Path(out_path)
    if not out_path.parent.is_dir():  # say so before the (slower) loading
        raise UserError(f"cannot write {out_path}: folder {out_path.parent} does not exist")
    write_atomic(out_path, build_report(load_study(run_dir_or_storage, study_name), designs, costs, effects))
    return out_path


def main(argv=None) -> int:
    ap = argument_parser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    ap.add_argument("storage", help="run folder (holding study.journal), a .journal file or a storage URL")
    ap.add_argument("--study", help="study name (default: config.toml's name, else the only study)")
    ap.add_argument("--out", help="output HTML file (default: RUN_DIR/report.html or ./report.html)")
    a = ap.parse_args(argv)
    print(write_report(a.storage, a.study, a.out))
    return 0


if __name__ == "__main__":
    cli_main(main)
