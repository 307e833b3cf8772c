"""Plotly figures of a loaded study (see load.load_study). Each function returns a go.Figure."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .load import completed, genome_columns, genome_dict, objectives_of, stage_count
from .pareto import add_ranks, pareto_mask
from .rediscovery import _field, catalog_designs, published_records

# Costs are those of the full-size target network; shown in G / M for readability.
UNITS = {"flops": (1e9, "FLOPs of the target (G)"), "params": (1e6, "params of the target (M)"),
         "activations": (1e6, "activations of the target (M)"), "latency_ms": (1.0, "latency (ms)"),
         "top1": (1.0, "top-1 on the proxy"), "top5": (1.0, "top-5 on the proxy")}
PUBLISHED_NOTE = ("Published ImageNet-1K top-1 (each paper's own training recipe and dataset: "
                  "not comparable with the proxy accuracy above)")
FRONT_COLOR, REF_COLOR = "#d62728", "#1f77b4"
PUB_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#ff7f0e")


def _unit(name: str) -> tuple[float, str]:
    return UNITS.get(name, (1.0, name))


def _hover(df: pd.DataFrame, names: Sequence[str]) -> tuple[np.ndarray, str]:
    cols = ["number", "genome_summary", *names]
    custom = df[cols].to_numpy(dtype=object)
    lines = [f"{n}: %{{customdata[{i + 2}]:.4g}}" for i, n in enumerate(names)]
    return custom, "trial %{customdata[0]}<br>%{customdata[1]}<br>" + "<br>".join(lines) + "<extra></extra>"


def _direction(objs, name) -> str:
    for o in objs:
        if o["name"] == name:
            return o["direction"]
    return "maximize" if name.startswith("top") else "minimize"


def _axes(objs, x, y):
    names = [o["name"] for o in objs]
    if y is None:
        y = "top1" if "top1" in names else names[0]
    if x is None:
        x = next((n for n in ("flops", "params", "latency_ms") if n in names and n != y),
                 next((n for n in names if n != y), "flops"))
    return x, y


def _noise_bars(df: pd.DataFrame, y: str) -> tuple[dict | None, str]:
    """Error bars of +- one seed std of top-1 (analysis.calibration.study_noise), and a title note."""
    from .calibration import study_noise

    noise, source = study_noise(df) if y == "top1" else (None, "none")
    if noise is None or noise.pooled_std is None:
        return None, ""
    bars = dict(type="constant", value=noise.pooled_std, thickness=1, width=3, color="rgba(90,90,90,0.6)")
    return bars, (f" (bars: +-{noise.pooled_std:.3f} seed std; differences under {noise.resolvable_1:.3f} "
                  f"are noise; from {source})")


def front_figure(df: pd.DataFrame, x: str | None = None, y: str | None = None, designs=None,
                 objectives: list[dict] | None = None, published: bool = True) -> go.Figure:
    """Accuracy vs cost: searched trials, the 2-D front as a step line, the full front (when there
    are more objectives), reference evaluations of catalog designs labelled by name, and below, on
    its own panel with the same cost axis, the published ImageNet points of the catalog."""
    objs = objectives_of(df, objectives)
    names = [o["name"] for o in objs]
    x, y = _axes(objs, x, y)
    (fx, xlabel), (fy, ylabel) = _unit(x), _unit(y)
    designs = catalog_designs() if designs is None else list(designs)
    backbone = (df.attrs.get("target") or {}).get("backbone")
    # Published points of the study's backbone only: other backbones would only stretch the axis.
    pubs = [(_field(d, "name"), r) for d in designs for r in published_records(d)
            if r.get(x) is not None and r.get("top1") is not None
            and (backbone is None or (genome_dict(_field(d, "genome")) or {}).get("backbone") == backbone)
            ] if published else []
    rows = 2 if pubs else 1
    bars, bars_note = _noise_bars(df, y)
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        row_heights=[0.65, 0.35][:rows],
                        subplot_titles=[f"{y} vs {x}: searched trials and Pareto front{bars_note}", PUBLISHED_NOTE][:rows])
    done = add_ranks(df, objs)
    done = completed(done).dropna(subset=[x, y])
    hover_names = [n for n in dict.fromkeys([*names, x, y]) if n in df.columns]
    if len(done):
        custom, tmpl = _hover(done, hover_names)
        fig.add_trace(go.Scatter(x=done[x] / fx, y=done[y] / fy, mode="markers", name="searched trials",
                                 marker=dict(color="rgba(120,120,120,0.55)", size=7), error_y=bars,
                                 customdata=custom, hovertemplate=tmpl), row=1, col=1)
        dx, dy = _direction(objs, x), _direction(objs, y)
        front2 = done[pareto_mask(done[[x, y]].astype(float).to_numpy(), [dx, dy])].sort_values([x, y])
        custom, tmpl = _hover(front2, hover_names)
        # Step line = the attainment surface between front points.
        fig.add_trace(go.Scatter(x=front2[x] / fx, y=front2[y] / fy, mode="lines+markers",
                                 line=dict(shape="hv" if dx == "minimize" else "vh", color=FRONT_COLOR, width=2),
                                 marker=dict(color=FRONT_COLOR, size=9), name=f"Pareto front ({y}, {x})", error_y=bars,
                                 customdata=custom, hovertemplate=tmpl), row=1, col=1)
        if len(objs) > 2:
            full = done[done["front_rank"] == 0]
            custom, tmpl = _hover(full, hover_names)
            fig.add_trace(go.Scatter(x=full[x] / fx, y=full[y] / fy, mode="markers",
                                     name=f"front over all {len(objs)} objectives",
                                     marker=dict(symbol="circle-open", color=FRONT_COLOR, size=14, line=dict(width=2)),
                                     customdata=custom, hovertemplate=tmpl), row=1, col=1)
    refs = completed(df, "reference").dropna(subset=[x, y])
    if len(refs):
        custom, tmpl = _hover(refs, hover_names)
        fig.add_trace(go.Scatter(x=refs[x] / fx, y=refs[y] / fy, mode="markers+text", name="catalog designs (proxy)",
                                 text=refs["reference"].fillna("reference"), textposition="top center",
                                 marker=dict(symbol="star", size=15, color=REF_COLOR, line=dict(color="white", width=1)),
                                 error_y=bars,
                                 customdata=custom, hovertemplate="<b>%{text}</b><br>" + tmpl), row=1, col=1)
    if not len(done) and not len(refs):
        fig.add_annotation(text="no completed trials yet", showarrow=False, xref="x domain", yref="y domain",
                           x=0.5, y=0.5, row=1, col=1)
    if pubs:
        pf = pd.DataFrame([{"design": n, "x": r[x] / fx, "top1": r["top1"], "source": r.get("source") or "?"}
                           for n, r in pubs])
        # One colour per source: each paper trained with its own recipe.
        for k, (src, part) in enumerate(pf.groupby("source", sort=False)):
            fig.add_trace(go.Scatter(x=part["x"], y=part["top1"], mode="markers+text", text=part["design"],
                                     textposition="top center", textfont=dict(size=10),
                                     name=f"published: {src if len(src) < 48 else src[:46] + '…'}", legendgroup="published",
                                     legendgrouptitle_text="published ImageNet-1K (other recipes)" if k == 0 else None,
                                     marker=dict(symbol="diamond", size=10, color=PUB_COLORS[k % len(PUB_COLORS)]),
                                     hovertemplate="<b>%{text}</b><br>top-1 %{y}<br>%{x:.4g}<extra>" + src[:60]
                                                   + "</extra>"), row=2, col=1)
        pad = max(0.5, 0.15 * (pf["top1"].max() - pf["top1"].min()))  # room for the labels
        fig.update_yaxes(title_text="published top-1 (%)", range=[pf["top1"].min() - pad, pf["top1"].max() + 2 * pad],
                         row=2, col=1)
        fig.update_xaxes(title_text=xlabel, row=2, col=1)
    fig.update_xaxes(title_text=xlabel, row=1, col=1, showticklabels=True)
    fig.update_yaxes(title_text=ylabel, row=1, col=1)
    fig.update_layout(height=820 if rows == 2 else 520, template="plotly_white",
                      legend=dict(orientation="h", yanchor="bottom", y=1.04, x=0, font=dict(size=11)))
    return fig


def hypervolume_figure(history: pd.DataFrame) -> go.Figure:
    """Normalised hypervolume after each searched trial (see pareto.hypervolume_history), against
    trial number and against cumulative compute hours; the raw value is in the hover text."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["against trial number", "against cumulative compute"])
    raw = history[["hypervolume", "number"]].to_numpy(dtype=object)
    for col, (xs, label) in enumerate([(history["number"], "trial number"),
                                       (history["cumulative_wall_s"] / 3600.0, "compute (wall hours, summed)")], 1):
        fig.add_trace(go.Scatter(x=xs, y=history["hypervolume_normalized"], mode="lines+markers",
                                 line=dict(shape="hv"), name="hypervolume", showlegend=False, customdata=raw,
                                 hovertemplate="trial %{customdata[1]}<br>%{x:.4g}<br>normalised %{y:.4f}"
                                               "<br>raw %{customdata[0]:.4g}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text=label, row=1, col=col)
    ref = history.attrs.get("reference_point") or {}
    fig.update_yaxes(title_text="hypervolume (share of best..worst box)", row=1, col=1)
    fig.update_layout(height=380, template="plotly_white",
                      title=dict(text="Hypervolume (reference point: " + ", ".join(f"{k}={v:.4g}" for k, v in ref.items())
                                 + (")" if not history.attrs.get("subsampled") else f"; {len(history)} evenly spaced trials)"),
                                 font=dict(size=14)))
    return fig


def parallel_figure(df: pd.DataFrame, objectives: list[dict] | None = None) -> go.Figure:
    """Parallel coordinates over the genome fields that vary, then the objectives; coloured by
    the first objective; the last axis says whether the trial is on the front."""
    objs = objectives_of(df, objectives)
    done = add_ranks(df, objs)
    done = completed(done)
    dims = []
    for c in genome_columns(done):
        vals = done[c].map(_category)
        cats = sorted(vals.unique())
        if len(cats) > 1:  # constant fields only add clutter
            code = {v: i for i, v in enumerate(cats)}
            dims.append(dict(label=c, values=vals.map(code), tickvals=list(code.values()), ticktext=cats))
    for o in objs:
        f, _ = _unit(o["name"])
        dims.append(dict(label=o["name"], values=done[o["name"]].astype(float) / f))
    dims.append(dict(label="on front", values=(done["front_rank"] == 0).astype(int), tickvals=[0, 1],
                     ticktext=["no", "yes"]))
    color = done[objs[0]["name"]].astype(float) if len(done) else []
    fig = go.Figure(go.Parcoords(dimensions=dims, labelangle=-30, labelside="top", tickfont=dict(size=9),
                                 line=dict(color=color, colorscale="Viridis", showscale=True,
                                           colorbar=dict(title=objs[0]["name"]))))
    fig.update_layout(height=560, template="plotly_white", margin=dict(l=90, r=90, t=150, b=40),
                      title=dict(text="Genome fields and objectives of the completed trials", font=dict(size=14)))
    return fig


def _category(v) -> str:
    """Axis label of a genome field value: '-' for none, 8 rather than 8.0 (NaN made the column float)."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _stage_tokens(st: dict | None) -> list[str]:
    st = st or {}
    toks = [f"{p['type']}@{p['position']}" for p in st.get("plugins") or []]
    toks += [f"{st[k]['type']}@{k}" for k in ("fusion", "stage_module") if st.get(k)]
    if st.get("kw") is not None:
        toks.append(f"kw b={st['kw']:g}")
    return toks or ["none"]


def stage_map_figure(df: pd.DataFrame, objectives: list[dict] | None = None) -> go.Figure:
    """Heatmap: share of Pareto-front genomes having module@position (rows) in each stage (columns)."""
    objs = objectives_of(df, objectives)
    ranked = add_ranks(df, objs)
    front = ranked[ranked["front_rank"] == 0]
    n_stages = stage_count(df)
    counts = [Counter() for _ in range(n_stages)]
    for g in front["genome"]:
        for i, st in enumerate((genome_dict(g) or {}).get("stages") or []):
            if i < n_stages:
                counts[i].update(set(_stage_tokens(st)))
    rows = sorted({t for c in counts for t in c}, key=lambda t: (t == "none", t))
    z = [[counts[i][t] / max(len(front), 1) for i in range(n_stages)] for t in rows]
    text = [[str(counts[i][t]) for i in range(n_stages)] for t in rows]
    fig = go.Figure(go.Heatmap(z=z, x=[f"stage {i + 1}" for i in range(n_stages)], y=rows, text=text,
                               texttemplate="%{text}", colorscale="Reds", zmin=0, zmax=1,
                               colorbar=dict(title="share"),
                               hovertemplate="%{y} in %{x}: %{text} front genomes<extra></extra>"))
    fig.update_layout(height=max(300, 60 + 28 * len(rows)), template="plotly_white", yaxis=dict(autorange="reversed"),
                      title=dict(text=f"Which module sits where on the Pareto front ({len(front)} genomes)",
                                 font=dict(size=14)))
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
    for mask, label, marker in [(done["front_rank"] != 0, "dominated", dict(size=3, color="rgba(120,120,120,0.5)")),
                                (done["front_rank"] == 0, "Pareto front", dict(size=5, color=FRONT_COLOR))]:
        part = done[mask]
        custom, tmpl = _hover(part, names)
        fig.add_trace(go.Scatter3d(x=part[a] / _unit(a)[0], y=part[b] / _unit(b)[0], z=part[c] / _unit(c)[0],
                                   mode="markers", name=label, marker=marker, customdata=custom, hovertemplate=tmpl))
    refs = completed(df, "reference")
    if len(refs):
        fig.add_trace(go.Scatter3d(x=refs[a] / _unit(a)[0], y=refs[b] / _unit(b)[0], z=refs[c] / _unit(c)[0],
                                   mode="markers+text", text=refs["reference"], name="catalog designs (proxy)",
                                   marker=dict(size=6, color=REF_COLOR, symbol="diamond")))
    fig.update_layout(height=650, template="plotly_white", margin=dict(l=0, r=0, t=40, b=0),
                      scene=dict(xaxis_title=_unit(a)[1], yaxis_title=_unit(b)[1], zaxis_title=_unit(c)[1]),
                      title=dict(text="Three objectives", font=dict(size=14)))
    return fig


def rediscovery_figure(table: pd.DataFrame, objectives: list[dict] | None = None) -> go.Figure:
    """The rediscovery table as a plotly table (optuna-dashboard shows figures, not HTML)."""
    cols = [c for c in ("design", "verdict", "top1_proxy", "dominated_by", "best_dominating", "sampled",
                        "nearest_trial", "nearest_distance") if c in table.columns]

    def cell(v):
        if isinstance(v, list):
            return ", ".join(map(str, v))
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            return ""
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    cells = [[cell(v) for v in table[c]] for c in cols]
    fig = go.Figure(go.Table(header=dict(values=[c.replace("_", " ") for c in cols] or ["no catalog design in this space"],
                                         fill_color="#eee", align="left"),
                             columnwidth=[3, 2.4, 1.4, 1.4, 1.6, 1.4, 1.4, 1.6][:len(cols)] or None,
                             cells=dict(values=cells, align="left", height=22)))
    fig.update_layout(height=140 + 24 * max(len(table), 1), margin=dict(l=10, r=10, t=40, b=10),
                      title=dict(text="Rediscovery of catalog designs", font=dict(size=14)))
    return fig


__all__ = ["front_figure", "hypervolume_figure", "parallel_figure", "stage_map_figure", "front3d_figure",
           "rediscovery_figure"]
