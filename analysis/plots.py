"""Plotly figures of a loaded study (see load.load_study). Each function returns a go.Figure."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from effects import pareto_mask
from effects.coding import SLOTS
from searchspace import catalog

from . import metrics
from .load import completed, genome_columns, objectives_of, read_genome, stage_count
from .pareto import add_ranks
from .rediscovery import published_records

PUBLISHED_NOTE = (
    "Published ImageNet-1K top-1 (each paper's own training recipe and dataset: "
    "not comparable with the proxy accuracy above)"
)
FRONT_COLOR, REF_COLOR = "#d62728", "#1f77b4"
PUB_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#ff7f0e")


def _unit(name: str) -> tuple[float, str]:
    """(divisor, axis title) of a metric (analysis.metrics): costs of the target are shown in G / M."""
    return metrics.scale(name), metrics.label(name)


def _hover(df: pd.DataFrame, names: Sequence[str]) -> tuple[np.ndarray, str]:
    cols = ["number", "genome_summary", *names]
    custom = df[cols].to_numpy(dtype=object)
    lines = [f"{n}: %{{customdata[{i + 2}]:.4g}}" for i, n in enumerate(names)]
    return custom, "trial %{customdata[0]}<br>%{customdata[1]}<br>" + "<br>".join(lines) + "<extra></extra>"


def _direction(objs, name) -> str:
    for o in objs:
        if o["name"] == name:
            return o["direction"]
    return metrics.direction(name)


def _axes(objs, x, y):
    names = [o["name"] for o in objs]
    if y is None:
        y = "top1" if "top1" in names else names[0]
    if x is None:
        x = next(
            (m.name for m in metrics.METRICS.values() if m.cost_axis and m.name in names and m.name != y),
            next((n for n in names if n != y), "flops"),
        )
    return x, y


def _noise_bars(df: pd.DataFrame, y: str) -> tuple[dict | None, str]:
    """Error bars of +- one seed std of top-1 (analysis.calibration.study_noise), and a title note."""
    from .calibration import study_noise

    noise, source = study_noise(df) if y == "top1" else (None, "none")
    if noise is None or noise.pooled_std is None:
        return None, ""
    bars = dict(type="constant", value=noise.pooled_std, thickness=1, width=3, color="rgba(90,90,90,0.6)")
    return bars, (
        f" (bars: +-{noise.pooled_std:.3f} seed std; differences under {noise.resolvable_1:.3f} "
        f"are noise; from {source})"
    )


def front_figure(
    df: pd.DataFrame,
    x: str | None = None,
    y: str | None = None,
    designs=None,
    objectives: list[dict] | None = None,
    published: bool = True,
) -> go.Figure:
    """Accuracy vs cost: searched trials, the 2-D front as a step line, the full front (when there
    are more objectives), reference evaluations of catalog designs labelled by name, and below, on
    its own panel with the same cost axis, the published ImageNet points of the catalog."""
    objs = objectives_of(df, objectives)
    names = [o["name"] for o in objs]
    x, y = _axes(objs, x, y)
    (fx, xlabel), (fy, ylabel) = _unit(x), _unit(y)
    pubs = published_points(df, designs, x) if published else pd.DataFrame()
    rows = 2 if len(pubs) else 1
    bars, bars_note = _noise_bars(df, y)
    refs = completed(df, "reference").dropna(subset=[x, y])
    # Fixed pixel heights per panel: the labels are spread on them (see _callouts).
    # Both panels fit a 1280x800 window when the labels leave room (about 770 px in all).
    panel_px = [max(340, LABEL_PX * (len(refs) + 2)), max(240, LABEL_PX * (len(pubs) + 2))][:rows]
    gap_px = 70
    fig = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=gap_px / (sum(panel_px) + gap_px),
        row_heights=panel_px,
        subplot_titles=[
            f"{y} vs {x}: single runs and their observed Pareto front"
            + (f"<br>{bars_note.strip()}" if bars_note else ""),
            PUBLISHED_NOTE,
        ][:rows],
    )
    done = add_ranks(df, objs)
    done = completed(done).dropna(subset=[x, y])
    hover_names = [n for n in dict.fromkeys([*names, x, y]) if n in df.columns]
    if len(done):
        custom, tmpl = _hover(done, hover_names)
        fig.add_trace(
            go.Scatter(
                x=done[x] / fx,
                y=done[y] / fy,
                mode="markers",
                name="searched trials",
                marker=dict(color="rgba(120,120,120,0.55)", size=7),
                error_y=bars,
                customdata=custom,
                hovertemplate=tmpl,
            ),
            row=1,
            col=1,
        )
        dx, dy = _direction(objs, x), _direction(objs, y)
        front2 = done[pareto_mask(done[[x, y]].astype(float).to_numpy(), [dx, dy])].sort_values([x, y])
        custom, tmpl = _hover(front2, hover_names)
        # Step line = the attainment surface between front points.
        fig.add_trace(
            go.Scatter(
                x=front2[x] / fx,
                y=front2[y] / fy,
                mode="lines+markers",
                line=dict(shape="hv" if dx == "minimize" else "vh", color=FRONT_COLOR, width=2),
                marker=dict(color=FRONT_COLOR, size=9),
                name=f"Pareto front ({y}, {x})",
                error_y=bars,
                customdata=custom,
                hovertemplate=tmpl,
            ),
            row=1,
            col=1,
        )
        if len(objs) > 2:
            full = done[done["front_rank"] == 0]
            custom, tmpl = _hover(full, hover_names)
            fig.add_trace(
                go.Scatter(
                    x=full[x] / fx,
                    y=full[y] / fy,
                    mode="markers",
                    name=f"front over all {len(objs)} objectives",
                    marker=dict(symbol="circle-open", color=FRONT_COLOR, size=14, line=dict(width=2)),
                    customdata=custom,
                    hovertemplate=tmpl,
                ),
                row=1,
                col=1,
            )
    if len(refs):
        custom, tmpl = _hover(refs, hover_names)
        fig.add_trace(
            go.Scatter(
                x=refs[x] / fx,
                y=refs[y] / fy,
                mode="markers",
                name="catalog designs (proxy)",
                text=refs["reference"].fillna("reference"),
                marker=dict(symbol="star", size=15, color=REF_COLOR, line=dict(color="white", width=1)),
                error_y=bars,
                customdata=custom,
                hovertemplate="<b>%{text}</b><br>" + tmpl,
            ),
            row=1,
            col=1,
        )
    if not len(done) and not len(refs):
        fig.add_annotation(
            text="no completed trials yet",
            showarrow=False,
            xref="x domain",
            yref="y domain",
            x=0.5,
            y=0.5,
            row=1,
            col=1,
        )
    xs = [
        v for v in (*(done[x] / fx if len(done) else []), *(refs[x] / fx), *(pubs["x"] if len(pubs) else []))
    ]
    x_range = _label_room(xs)
    if len(refs):
        ys = [*(done[y] / fy if len(done) else []), *(refs[y] / fy)]
        y_range = _callouts(
            fig,
            1,
            refs[x] / fx,
            refs[y] / fy,
            refs["reference"].fillna("reference"),
            [REF_COLOR] * len(refs),
            x_range,
            panel_px[0],
            (min(ys), max(ys)),
            others=list(zip(done[x] / fx, done[y] / fy)) if len(done) else (),
        )
        fig.update_yaxes(range=y_range, row=1, col=1)
    if len(pubs):
        # One colour per source: each paper trained with its own recipe; the legend names it
        # briefly, the hover text and the table under the figure in full.
        colors = {}
        for k, (src, part) in enumerate(pubs.groupby("short_source", sort=False)):
            colors[src] = PUB_COLORS[k % len(PUB_COLORS)]
            fig.add_trace(
                go.Scatter(
                    x=part["x"],
                    y=part["top1"],
                    mode="markers",
                    text=part["design"],
                    name=src,
                    legendgroup="published",
                    customdata=part[["source"]].to_numpy(),
                    legendgrouptitle_text="published ImageNet-1K (each paper's own recipe)"
                    if k == 0
                    else None,
                    marker=dict(symbol="diamond", size=10, color=colors[src]),
                    hovertemplate="<b>%{text}</b><br>top-1 %{y}<br>%{x:.4g}<br>%{customdata[0]}"
                    "<extra></extra>",
                ),
                row=2,
                col=1,
            )
        y_range = _callouts(
            fig,
            2,
            pubs["x"],
            pubs["top1"],
            pubs["design"],
            [colors[s] for s in pubs["short_source"]],
            x_range,
            panel_px[1],
        )
        fig.update_yaxes(title_text="published top-1 (%)", range=y_range, row=2, col=1)
        fig.update_xaxes(title_text=xlabel, row=2, col=1)
    if x_range is not None:
        fig.update_xaxes(range=x_range)
    fig.update_xaxes(title_text=xlabel, row=1, col=1, showticklabels=True)
    fig.update_yaxes(title_text=ylabel, row=1, col=1)
    fig.update_layout(
        height=sum(panel_px) + gap_px * (rows - 1) + FRONT_MARGIN["t"] + FRONT_MARGIN["b"],
        template="plotly_white",
        margin=FRONT_MARGIN,
        legend=dict(orientation="v", yanchor="top", y=1, x=1.01, xanchor="left", font=dict(size=11)),
    )
    return fig


def short_source(source: str, others=()) -> str:
    """A legend name for a published source string: its head, before any ' (', ',', ':' or ' / ',
    without the 'seed ' prefix; when two different sources would read the same, the first
    comma-separated remainder that differs is added back."""

    def head(s):
        s = s[5:] if s.startswith("seed ") else s
        return re.split(r" \(|,|:| / ", s, maxsplit=1)[0].strip() or s

    short = head(source)
    if any(o != source and head(o) == short for o in others):
        extra = [p.strip() for p in source.split(",")[1:]]
        short = f"{short}, {extra[0]}" if extra else short
    return short if len(short) <= 40 else short[:39] + "…"


def published_points(df: pd.DataFrame, designs=None, x: str = "flops") -> pd.DataFrame:
    """The catalog's published ImageNet rows with a top-1 and an `x` cost, for the study's backbone
    only (others would only stretch the axis): design, x (in plot units), top1, source, short_source,
    each row as the paper printed it."""
    designs = catalog.designs() if designs is None else list(designs)
    backbone = (df.attrs.get("target") or {}).get("backbone")
    fx = _unit(x)[0]
    rows = [
        {"design": d.name, "x": r[x] / fx, "top1": r["top1"], "source": r.get("source") or "?"}
        for d in designs
        for r in published_records(d)
        if r.get(x) is not None
        and r.get("top1") is not None
        and (backbone is None or d.genome.backbone == backbone)
    ]
    out = pd.DataFrame(rows, columns=["design", "x", "top1", "source"])
    sources = list(dict.fromkeys(out["source"]))
    out["short_source"] = [short_source(s, sources) for s in out["source"]]
    return out


LABEL_PX = 16  # vertical room of one 10 px label
CHAR_PX = 6.2  # width of one character of a 10 px label (generous for sans-serif names)
PLOT_MIN_PX = 600  # the narrowest plot area the labels are laid out for (a 1300 px window gives ~850)
FRONT_MARGIN = dict(l=70, r=20, t=60, b=60)


def _label_room(xs) -> list[float] | None:
    """An x range with room right of the data for the labels of the rightmost points."""
    xs = [float(v) for v in xs if v == v]
    if not xs:
        return None
    lo, hi = min(xs), max(xs)
    span = max(hi - lo, 0.02 * abs(hi) or 1.0)
    return [lo - 0.04 * span, hi + 0.3 * span]


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _callouts(
    fig, row: int, xs, ys, names, colors, x_range, panel_px: int, y_extent=None, others=()
) -> list[float] | None:
    """Name each point by a label just right of it, joined by a short line. Labels are laid out
    greedily in pixels (the panel's fixed height, the narrowest plot width expected): each takes
    the nearest free height, alternately above and below its point, so no label covers another or
    another point's marker (nor one of `others`, (x, y) points drawn unlabelled). A wider plot
    only moves points apart. Returns the y range laid out on
    (set it on the axis)."""
    pts = [(float(x), float(y), str(n), c) for x, y, n, c in zip(xs, ys, names, colors)]
    if not pts or x_range is None:
        return None
    lo, hi = y_extent or (min(p[1] for p in pts), max(p[1] for p in pts))
    pad = 0.12 * ((hi - lo) or max(0.05 * abs(hi), 0.01))
    y0, y1 = lo - pad, hi + pad
    x0, x1 = x_range

    def px(x, y):
        return (x - x0) / (x1 - x0) * PLOT_MIN_PX, (y1 - y) / (y1 - y0) * panel_px

    markers = [(*(c - 6 for c in px(x, y)), *(c + 6 for c in px(x, y))) for x, y, *_ in pts]
    markers += [(*(c - 5 for c in px(x, y)), *(c + 5 for c in px(x, y))) for x, y in others]
    placed = []
    sub = fig.get_subplot(row, 1)
    xa, ya = sub.xaxis.plotly_name.replace("axis", ""), sub.yaxis.plotly_name.replace("axis", "")
    steps = [0] + [k * s for k in range(1, 2 * len(pts) + 4) for s in (-1, 1)]  # px up is negative
    for i in sorted(range(len(pts)), key=lambda i: (-pts[i][1], pts[i][0])):  # top first
        x, y, name, color = pts[i]
        cx, cy = px(x, y)
        w, h = CHAR_PX * len(name) + 6, LABEL_PX - 2

        def box(dy):
            return (cx + 12, cy + dy - h / 2, cx + 12 + w, cy + dy + h / 2)

        free = [
            dy
            for dy in (k * LABEL_PX / 2 for k in steps)
            if 0 <= box(dy)[1]
            and box(dy)[3] <= panel_px
            and not any(_overlaps(box(dy), b) for b in placed)
            and not any(_overlaps(box(dy), m) for j, m in enumerate(markers) if j != i)
        ]
        dy = free[0] if free else 0.0
        placed.append(box(dy))
        fig.add_annotation(
            x=x,
            y=y,
            xref=xa,
            yref=ya,
            ax=12,
            ay=dy,
            text=name,
            name=f"label:{name}",
            showarrow=True,
            arrowhead=0,
            arrowwidth=0.8,
            arrowcolor=color,
            standoff=4,
            xanchor="left",
            yanchor="middle",
            font=dict(size=10, color=color),
        )
    return [y0, y1]


def hypervolume_figure(history: pd.DataFrame) -> go.Figure:
    """Normalised hypervolume after each searched trial (see pareto.hypervolume_history), against
    trial number and against cumulative compute hours; the raw value is in the hover text."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["against trial number", "against cumulative compute"])
    raw = history[["hypervolume", "number"]].to_numpy(dtype=object)
    for col, (xs, label) in enumerate(
        [
            (history["number"], "trial number"),
            (history["cumulative_wall_s"] / 3600.0, "compute (wall hours, summed)"),
        ],
        1,
    ):
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=history["hypervolume_normalized"],
                mode="lines+markers",
                line=dict(shape="hv"),
                name="hypervolume",
                showlegend=False,
                customdata=raw,
                hovertemplate="trial %{customdata[1]}<br>%{x:.4g}<br>normalised %{y:.4f}"
                "<br>raw %{customdata[0]:.4g}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text=label, row=1, col=col)
    ref = history.attrs.get("reference_point") or {}
    fig.update_yaxes(title_text="hypervolume (share of best..worst box)", row=1, col=1)
    fig.update_layout(
        height=380,
        template="plotly_white",
        title=dict(
            text="Hypervolume (reference point: "
            + ", ".join(f"{k}={v:.4g}" for k, v in ref.items())
            + (")" if not history.attrs.get("subsampled") else f"; {len(history)} evenly spaced trials)"),
            font=dict(size=14),
        ),
    )
    return fig


PARALLEL_AXES = 8  # genome axes shown at first; the menu shows all that vary


def parallel_figure(
    df: pd.DataFrame, objectives: list[dict] | None = None, max_axes: int = PARALLEL_AXES
) -> go.Figure:
    """Parallel coordinates of the completed trials: genome fields, then the objectives, then
    whether the trial is on the front; coloured by the first objective. The fields that vary on
    the front come first (most values on the front first), at most `max_axes` of them at first;
    a menu switches to every field that varies over the trials (constant ones never show)."""
    objs = objectives_of(df, objectives)
    done = completed(add_ranks(df, objs))
    on_front = done["front_rank"] == 0 if len(done) else pd.Series(dtype=bool)
    fields = []
    for k, c in enumerate(genome_columns(done)):
        vals = done[c].map(_category)
        if vals.nunique() > 1:
            fields.append((-vals[on_front].nunique(), -vals.nunique(), k, c, vals))
    fields.sort(key=lambda f: f[:3])

    def axis(vals, label):
        code = {v: i for i, v in enumerate(sorted(vals.unique()))}
        return dict(
            label=label, values=vals.map(code).tolist(), tickvals=list(code.values()), ticktext=list(code)
        )

    genome_axes = [axis(vals, c) for *_, c, vals in fields]
    tail = [
        dict(label=o["name"], values=(done[o["name"]].astype(float) / _unit(o["name"])[0]).tolist())
        for o in objs
    ]
    tail.append(
        dict(label="on front", values=on_front.astype(int).tolist(), tickvals=[0, 1], ticktext=["no", "yes"])
    )
    varying_on_front = sum(1 for f in fields if f[0] < -1)
    first = genome_axes[: max(min(max_axes, varying_on_front), min(max_axes, len(genome_axes)))]
    color = done[objs[0]["name"]].astype(float).tolist() if len(done) else []
    fig = go.Figure(
        go.Parcoords(
            dimensions=first + tail,
            labelangle=-30,
            labelside="top",
            tickfont=dict(size=9),
            line=dict(
                color=color, colorscale="Viridis", showscale=True, colorbar=dict(title=objs[0]["name"])
            ),
        )
    )
    if len(first) < len(genome_axes):
        fig.update_layout(
            updatemenus=[
                dict(
                    type="dropdown",
                    x=0,
                    xanchor="left",
                    y=1.34,
                    yanchor="top",
                    showactive=True,
                    buttons=[
                        dict(
                            label=f"{len(first)} fields that vary most on the front",
                            method="restyle",
                            args=[{"dimensions": [first + tail]}, [0]],
                        ),
                        dict(
                            label=f"all {len(genome_axes)} fields that vary",
                            method="restyle",
                            args=[{"dimensions": [genome_axes + tail]}, [0]],
                        ),
                    ],
                )
            ]
        )
    shown = (
        f"{len(first)} of {len(genome_axes)} genome fields that vary, those varying on the front first"
        if len(first) < len(genome_axes)
        else f"the {len(genome_axes)} genome fields that vary"
    )
    fig.update_layout(
        height=560,
        template="plotly_white",
        margin=dict(l=90, r=90, t=170, b=40),
        title=dict(
            text=f"Completed trials: {shown}, then the objectives",
            font=dict(size=14),
            y=0.98,
            yref="container",
            yanchor="top",
        ),
    )
    return fig


def _category(v) -> str:
    """Axis label of a genome field value: '-' for none, 8 rather than 8.0 (NaN made the column float)."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{v:g}" if isinstance(v, float) else str(v)


def stage_map_figure(df: pd.DataFrame, objectives: list[dict] | None = None) -> go.Figure:
    """Heatmap: share of Pareto-front genomes having module@position (rows) in each stage (columns)."""
    objs = objectives_of(df, objectives)
    ranked = add_ranks(df, objs)
    front = ranked[ranked["front_rank"] == 0]
    n_stages = stage_count(df)
    counts = [Counter() for _ in range(n_stages)]
    for g in front["genome"].map(read_genome):
        for i, st in enumerate(g.stages[:n_stages] if g is not None else ()):
            counts[i].update(set(st.placements()))
    rows = sorted({t for c in counts for t in c}, key=lambda t: (t == "none", t))
    z = [[counts[i][t] / max(len(front), 1) for i in range(n_stages)] for t in rows]
    text = [[str(counts[i][t]) for i in range(n_stages)] for t in rows]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"stage {i + 1}" for i in range(n_stages)],
            y=rows,
            text=text,
            texttemplate="%{text}",
            colorscale="Reds",
            zmin=0,
            zmax=1,
            colorbar=dict(title="share"),
            hovertemplate="%{y} in %{x}: %{text} front genomes<extra></extra>",
        )
    )
    fig.update_layout(
        height=max(300, 60 + 28 * len(rows)),
        template="plotly_white",
        yaxis=dict(autorange="reversed"),
        title=dict(
            text=f"Which module sits where on the Pareto front ({len(front)} genomes)", font=dict(size=14)
        ),
    )
    return fig


def front3d_figure(df: pd.DataFrame, objectives: list[dict] | None = None) -> go.Figure | None:
    """3-D scatter of the first three objectives (None when the study has fewer than three)."""
    objs = objectives_of(df, objectives)
    if len(objs) < 3:
        return None
    names = [o["name"] for o in objs]
    a, b, c = names[:3]
    ranked = add_ranks(df, objs)
    done = completed(ranked)
    fig = go.Figure()
    for mask, label, marker in [
        (done["front_rank"] != 0, "dominated", dict(size=3, color="rgba(120,120,120,0.5)")),
        (done["front_rank"] == 0, "Pareto front", dict(size=5, color=FRONT_COLOR)),
    ]:
        part = done[mask]
        custom, tmpl = _hover(part, names)
        fig.add_trace(
            go.Scatter3d(
                x=part[a] / _unit(a)[0],
                y=part[b] / _unit(b)[0],
                z=part[c] / _unit(c)[0],
                mode="markers",
                name=label,
                marker=marker,
                customdata=custom,
                hovertemplate=tmpl,
            )
        )
    refs = completed(df, "reference")
    if len(refs):
        fig.add_trace(
            go.Scatter3d(
                x=refs[a] / _unit(a)[0],
                y=refs[b] / _unit(b)[0],
                z=refs[c] / _unit(c)[0],
                mode="markers+text",
                text=refs["reference"],
                name="catalog designs (proxy)",
                marker=dict(size=6, color=REF_COLOR, symbol="diamond"),
            )
        )
    fig.update_layout(
        height=650,
        template="plotly_white",
        margin=dict(l=0, r=0, t=40, b=0),
        scene=dict(xaxis_title=_unit(a)[1], yaxis_title=_unit(b)[1], zaxis_title=_unit(c)[1]),
        title=dict(text="Three objectives", font=dict(size=14)),
    )
    return fig


REDISCOVERY_COLUMNS = {  # column: relative width
    "design": 3,
    "verdict": 2.4,
    "top1_proxy": 1.4,
    "dominated_by": 1.4,
    "best_dominating": 1.6,
    "sampled": 1.4,
    "nearest_trial": 1.4,
    "nearest_distance": 1.6,
}
VERDICT_COLUMNS = {
    "design": 2.2,
    "predicted": 1.2,
    "low": 1,
    "high": 1,
    "verdict": 4,
    "single_run": 1.6,
    "believe": 5,
}


def rediscovery_figure(
    table: pd.DataFrame,
    objectives: list[dict] | None = None,
    columns: dict[str, float] = REDISCOVERY_COLUMNS,
    title: str = "Rediscovery of catalog designs at face value (single runs)",
    row_px: int = 24,
) -> go.Figure:
    """A table as a plotly table (optuna-dashboard shows figures, not HTML): by default the
    rediscovery table; `columns`: which to show and their relative widths; `row_px`: room per row."""
    cols = [c for c in columns if c in table.columns]

    def cell(v):
        if isinstance(v, list):
            return ", ".join(map(str, v))
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            return ""
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    cells = [[cell(v) for v in table[c]] for c in cols]
    fig = go.Figure(
        go.Table(
            header=dict(
                values=[c.replace("_", " ") for c in cols] or ["no catalog design in this space"],
                fill_color="#eee",
                align="left",
            ),
            columnwidth=[columns[c] for c in cols] or None,
            cells=dict(values=cells, align="left", height=22),
        )
    )
    fig.update_layout(
        height=140 + row_px * max(len(table), 1),
        margin=dict(l=10, r=10, t=40, b=10),
        title=dict(text=title, font=dict(size=14)),
    )
    return fig


__all__ = [
    "front_figure",
    "hypervolume_figure",
    "parallel_figure",
    "stage_map_figure",
    "front3d_figure",
    "rediscovery_figure",
    "fidelity_figure",
]


def effects_heatmap(
    parts: pd.DataFrame, title: str = "Effect on proxy top-1 of each part of a stage choice"
) -> go.Figure:
    """Module x stage grids of a part-effects table (effects.Fit.part_effects), one facet per position
    (block positions, r, fusion, stage module, KW budget; the global choices in a facet of their own):
    the estimate as colour and text, its interval (and the part levels aliased to it) in the hover.
    Empty cells are parts a stage never had."""
    if parts.empty:
        return go.Figure().update_layout(title=f"{title}: every run has the same choices")
    p = parts.assign(
        facet=[pt.split(".", 1)[1] if "." in pt else "global" for pt in parts["part"]],
        column=[f if "." in pt else pt for f, pt in zip(parts["factor"], parts["part"])],
    )
    slot = {s: i for i, s in enumerate(SLOTS)}
    facets = sorted(p["facet"].unique(), key=lambda f: (slot.get(f.split(".")[0], len(SLOTS)), f))
    ncols = min(3, len(facets))
    grid_rows = [facets[i : i + ncols] for i in range(0, len(facets), ncols)]
    heights = [max(p[p["facet"] == f]["choice"].nunique() for f in row) for row in grid_rows]
    fig = make_subplots(
        rows=len(grid_rows),
        cols=ncols,
        subplot_titles=facets,
        row_heights=heights,
        horizontal_spacing=0.12,
        vertical_spacing=min(0.12, 0.5 / max(len(grid_rows), 1)),
    )
    stages = sorted(p[p["facet"] != "global"]["column"].unique(), key=lambda s: int(s[1:]))
    for k, facet in enumerate(facets):
        d = p[p["facet"] == facet]
        cols = stages if facet != "global" else sorted(d["column"].unique())
        grid = d.pivot(index="choice", columns="column", values="estimate").reindex(columns=cols)
        hover = [[_effect_hover(d, choice, col) for col in cols] for choice in grid.index]
        fig.add_trace(
            go.Heatmap(
                z=grid.to_numpy(float),
                x=cols,
                y=list(grid.index),
                text=[["" if np.isnan(v) else f"{v:+.3f}" for v in row] for row in grid.to_numpy(float)],
                texttemplate="%{text}",
                customdata=hover,
                hovertemplate="%{customdata}<extra></extra>",
                coloraxis="coloraxis",
                xgap=2,
                ygap=2,
            ),
            row=k // ncols + 1,
            col=k % ncols + 1,
        )
    bound = float(np.nanmax(np.abs(p["estimate"]))) if len(p) and p["estimate"].notna().any() else 1.0
    fig.update_layout(
        title=title,
        coloraxis=dict(colorscale="RdBu", cmid=0, cmin=-bound, cmax=bound, colorbar=dict(title="top-1")),
        height=120 + 34 * sum(heights) + 60 * len(grid_rows),
        margin=dict(l=10, r=10, t=80, b=10),
        plot_bgcolor="white",  # a part a stage never had: a blank cell
    )
    fig.update_yaxes(automargin=True)
    return fig


def fidelity_figure(fid, title: str = "Effect on proxy top-1 at each rung of the ladder") -> go.Figure:
    """Each stage choice's effect against its baseline at every rung of an across-fidelity model
    (effects.Fidelity): one line per choice, its interval as error bars; a choice whose effect moves
    with fidelity (Holm) drawn solid, the others dotted."""
    eff = fid.effects
    moving = {(r.factor, r.choice) for r in fid.moves.itertuples() if r.moves} if len(fid.moves) else set()
    x = [fid.label(r) for r in fid.rungs]
    fig = go.Figure()
    for (factor, choice), g in eff.groupby(["factor", "choice"], sort=False):
        g = g.set_index("rung").reindex(fid.rungs)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=g["estimate"],
                mode="lines+markers",
                name=f"{factor} {choice}" + (" (moves)" if (factor, choice) in moving else ""),
                line=dict(dash="solid" if (factor, choice) in moving else "dot"),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=g["high"] - g["estimate"],
                    arrayminus=g["estimate"] - g["low"],
                    thickness=1,
                ),
                hovertemplate=f"{factor} {choice}<br>%{{x}}: %{{y:+.3f}}<extra></extra>",
            )
        )
    fig.add_hline(y=0, line=dict(color="grey", width=1))
    fig.update_layout(
        title=title, xaxis_title="rung (what it changes)", yaxis_title="effect on top-1", height=520
    )
    return fig


def model_front_figure(
    front: pd.DataFrame, designs: pd.DataFrame | None = None, level: float = 0.95
) -> go.Figure:
    """The effects model's answer: its front (predicted top-1 with its interval against FLOPs; filled:
    trained here, open: predicted only) and the published designs' predictions, labelled."""
    fx, xlabel = _unit("flops")
    fig = go.Figure()

    def points(d: pd.DataFrame, name: str, marker: dict, text=None, **kw) -> None:
        fig.add_trace(
            go.Scatter(
                x=d["flops"] / fx,
                y=d["predicted"],
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=d["high"] - d["predicted"],
                    arrayminus=d["predicted"] - d["low"],
                    thickness=1,
                    width=2,
                ),
                name=name,
                marker=marker,
                text=text,
                hovertemplate="%{text}<br>%{x:.3f} G<br>predicted %{y:.3f}<extra></extra>",
                **kw,
            )
        )

    if len(front):
        f = front.sort_values("flops")
        text = [g.summary() if hasattr(g, "summary") else str(g) for g in f["genome"]]
        for trained, name, symbol in (
            (True, "model front: trained here", "circle"),
            (False, "model front: predicted only", "circle-open"),
        ):
            part = f[f["evaluated"].astype(bool) == trained]
            if len(part):
                labels = [t for t, e in zip(text, f["evaluated"].astype(bool)) if e == trained]
                points(
                    part,
                    name,
                    dict(symbol=symbol, size=10, color=FRONT_COLOR, line=dict(width=2)),
                    labels,
                    mode="markers",
                )
        fig.add_trace(
            go.Scatter(
                x=f["flops"] / fx,
                y=f["predicted"],
                mode="lines",
                line=dict(shape="vh", color=FRONT_COLOR, width=1),
                showlegend=False,
                hoverinfo="skip",
            )
        )
    d = (
        designs.dropna(subset=["predicted", "flops"])
        if designs is not None and len(designs)
        else pd.DataFrame()
    )
    d = d.sort_values(["flops", "predicted"]) if len(d) else d  # neighbours' labels alternate above/below
    if len(d):
        points(
            d,
            "published designs (predicted)",
            dict(symbol="star", size=13, color=REF_COLOR, line=dict(color="white", width=1)),
            [f"{n}: {v}" for n, v in zip(d["design"], d["verdict"])],
            mode="markers+text",
            textposition=["top right", "bottom right"] * (len(d) // 2) + ["top right"] * (len(d) % 2),
            texttemplate=list(d["design"]),
            textfont=dict(size=10, color=REF_COLOR),
        )
    fig.update_layout(
        height=460,
        template="plotly_white",
        margin=dict(l=60, r=20, t=50, b=50),
        title=dict(
            text=f"Model front: predicted top-1 with {level:.0%} intervals (every run pooled)",
            font=dict(size=14),
        ),
        xaxis_title=xlabel,
        yaxis_title="predicted proxy top-1",
        legend=dict(orientation="h", y=-0.18, yanchor="top"),
    )
    return fig


def _effect_hover(d: pd.DataFrame, choice: str, column: str) -> str:
    m = d[(d["choice"] == choice) & (d["column"] == column)]
    if m.empty:
        return f"{column} {choice}: never run"
    r = m.iloc[0]
    text = f"{r.part} = {choice} (against {r.baseline})<br>{r.estimate:+.4f} [{r.low:+.4f}, {r.high:+.4f}]"
    return text + (f"<br>always with {r.aliased}" if getattr(r, "aliased", "") else "")
