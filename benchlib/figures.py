"""Plotly figures (and HTML tables) of a run's analysis: one builder per figure, each returning a
``go.Figure`` built from the tidy frames :mod:`benchlib.analysis` derives, and the HTML the
report's notebook cells show (:class:`Html`, :data:`CSS`).

Every text that comes from a run (arm and case names, notes, environment values) passes through
:func:`plain` before plotly sees it: plotly reads ``<b>``, ``<br>`` and entities in labels, so the
text is entity-escaped and shows literally. A figure with nothing to show says why in words.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .stats import overhead_from_ratio

__all__ = [
    "BANDS", "CONFIG", "CSS", "EFFECT_STYLE", "Html", "MAX_POINTS", "PALETTE", "TELEMETRY_SERIES",
    "TEMPLATE", "VERDICT_STYLE", "arm_colours", "case_label", "ceilings", "decomposition", "distributions",
    "energy", "forest", "format_value", "html_table", "message", "plain", "telemetry", "time_scale",
    "to_html", "wrapped"
]

TEMPLATE = "plotly_white"
PALETTE = qualitative.Plotly
MAX_POINTS = 3000  # per telemetry trace; longer series are thinned evenly
#: verdict code -> (legend label, colour) in the forest plot.
VERDICT_STYLE = {
    "equivalent": ("equivalent within the margin", "#2ca02c"),
    "overhead": ("overhead (CI excludes 0)", "#d62728"),
    "faster": ("faster (CI excludes 0)", "#1f77b4"),
    "inconclusive": ("inconclusive", "#7f7f7f"),
    "too_few": ("too few invocations (no CI)", "#bcbcbc"),
}
#: (from %, to %, label, colour) of the seed's verdict bands; None: to the edge of the plot.
#: Under 10 %: not the container; 20-40 %: a normal container cost; over 50 %: the container.
BANDS: tuple[tuple[float, float | None, str, str], ...] = (
    (-10.0, 10.0, "under 10 %", "rgba(44,160,44,0.10)"),
    (20.0, 40.0, "20-40 %", "rgba(255,165,0,0.14)"),
    (50.0, None, "over 50 %", "rgba(214,39,40,0.10)"),
)
TELEMETRY_SERIES = (("sm_clock_mhz", "SM clock (MHz)"), ("power_w", "power (W)"), ("temperature_c", "temperature (°C)"))
CONFIG = {"displaylogo": False, "responsive": True}
CSS = """
table.benchlib-facts th, table.benchlib-facts td,
.jp-RenderedHTMLCommon table.benchlib-facts th, .jp-RenderedHTMLCommon table.benchlib-facts td {
  text-align: left; padding: 2px 14px 2px 0; border: none; background: none; }
div.benchlib-problems { border-left: 4px solid #d62728; background: #fdf1f1; padding: 8px 14px; margin: 10px 0; }
div.benchlib-verdict { border-left: 4px solid #1f77b4; background: #f2f7fc; padding: 8px 14px; margin: 8px 0;
  font-size: 1.05em; line-height: 1.5; }
div.benchlib-answer { border-left: 4px solid #1f77b4; background: #f2f7fc; padding: 6px 14px; margin: 6px 0;
  line-height: 1.45; }
div.benchlib-answer ul { margin: 2px 0 6px 0; } div.benchlib-answer p { margin: 4px 0; }
div.benchlib-answer li.benchlib-slower strong, div.benchlib-answer li.benchlib-fails strong { color: #b00020; }
div.benchlib-answer li.benchlib-same strong { color: #1b7f3b; }
div.benchlib-answer code { font-size: 0.9em; overflow-wrap: anywhere; }
div.benchlib-scroll { overflow-x: auto; max-width: 100%; }
table.benchlib-table { border-collapse: collapse; font-size: 0.92em; margin: 6px 0; }
table.benchlib-table th, table.benchlib-table td,
.jp-RenderedHTMLCommon table.benchlib-table th, .jp-RenderedHTMLCommon table.benchlib-table td {
  border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; overflow-wrap: break-word; }
table.benchlib-table td:first-child { overflow-wrap: anywhere; min-width: 12em; max-width: 24em; }
table.benchlib-table th, .jp-RenderedHTMLCommon table.benchlib-table th { background: #f4f4f4; }
p.benchlib-note { color: #555; }
"""


@dataclass(frozen=True)
class Html:
    """HTML a notebook cell shows as such."""

    text: str

    def _repr_html_(self) -> str:
        return self.text




# --------------------------------------------------------------------------- text and helpers


def plain(text: Any) -> str:
    """Text for a plotly label: entities escaped, so markup in it shows literally."""
    return html.escape(str(text), quote=False)


def wrapped(text: Any, width: int = 48) -> str:
    """:func:`plain` text broken into lines of about ``width`` characters (plotly's ``<br>``), at
    the commas and spaces of a case label."""
    lines: list[str] = []
    for word in re.split(r"(?<=[, ])", str(text)):
        if lines and len(lines[-1]) + len(word) <= width:
            lines[-1] += word
        else:
            lines.append(word)
    return "<br>".join(plain(line.strip()) for line in lines)


def case_label(benchmark: str, case: str, metric: str = "time") -> str:
    """``matmul n=128,dtype=fp32`` (and `` · metric`` for metrics other than time)."""
    label = f"{benchmark} {case}"
    return label if metric == "time" else f"{label} · {metric}"


def arm_colours(arms: Sequence[str]) -> dict[str, str]:
    return {arm: PALETTE[i % len(PALETTE)] for i, arm in enumerate(arms)}


def format_value(value: float, unit: str) -> str:
    """A value with an SI prefix chosen for seconds (``26.5 µs``), three significant figures."""
    if value is None or not np.isfinite(value):
        return "—"
    if unit == "s":
        for scale, prefix in ((1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")):
            if abs(value) >= scale or scale == 1e-9:
                return f"{value / scale:.3g} {prefix}s"
    return f"{value:.3g}" if unit in ("", "1") else f"{value:.3g} {unit}"


def time_scale(values: Iterable[float]) -> tuple[float, str]:
    """(divisor, unit) that shows these seconds in s, ms, µs or ns by their median."""
    median = float(np.nanmedian(np.asarray(values, dtype=float)))
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if median >= scale:
            return scale, unit
    return 1e-9, "ns"


def message(title: str, text: str, height: int = 220) -> go.Figure:
    """A figure that says, in words, why there is nothing to plot."""
    fig = go.Figure()
    fig.add_annotation(text=plain(text), x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font={"size": 15, "color": "#555"})
    fig.update_layout(template=TEMPLATE, title=plain(title), height=height,
                      xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def _grid(titles: Sequence[str], row_height: int = 320) -> tuple[go.Figure, int]:
    """Subplots for one panel per title, up to three a row; returns (figure, columns)."""
    columns = min(3, len(titles))
    rows = math.ceil(len(titles) / columns)
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=[wrapped(t, 40) for t in titles],
                        horizontal_spacing=0.08, vertical_spacing=min(0.12, 0.5 / rows))
    fig.update_layout(template=TEMPLATE, height=140 + row_height * rows, margin={"t": 120},
                      legend={"orientation": "h", "y": -0.06 if rows > 1 else -0.15})
    return fig, columns


def _spread_is_wide(values: np.ndarray) -> bool:
    """True when positive values span more than 20x: a log axis shows them better."""
    finite = values[np.isfinite(values) & (values > 0)]
    return finite.size > 1 and finite.max() / finite.min() > 20


# --------------------------------------------------------------------------- forest


def _forest_rows(comparison: pd.DataFrame) -> pd.DataFrame:
    """Comparison rows with a finite ratio, with overhead and CI ends in %, and a plot category."""
    rows = comparison[np.isfinite(comparison["ratio"].astype(float))].copy()
    higher = rows["unit"].astype(str).str.endswith("/s").to_numpy()
    ends = np.stack([np.where(higher, overhead_from_ratio(rows[c].astype(float), True),
                              overhead_from_ratio(rows[c].astype(float))) for c in ("ci_low", "ci_high")])
    rows["oh"] = 100 * rows["overhead"].astype(float)
    rows["oh_low"], rows["oh_high"] = 100 * np.fmin(*ends), 100 * np.fmax(*ends)
    faster = rows["verdict_code"].eq("overhead") & (rows["oh"] < 0)
    rows["category"] = rows["verdict_code"].where(~faster, "faster")
    several_arms = rows["arm"].nunique() > 1
    rows["label"] = [case_label(b, c, m) + (f" — {a}" if several_arms else "")
                     for b, c, m, a in rows[["benchmark", "case", "metric", "arm"]].itertuples(index=False)]
    return rows.reset_index(drop=True)


def _overhead_range(*percent: pd.Series) -> list[float]:
    """An x range (%) that holds these overheads and CI ends, at least [-15, 60], at most [-100, 300]."""
    with np.errstate(invalid="ignore"):
        values = np.concatenate([np.asarray(p, dtype=float) for p in percent])
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
    return [max(-100.0, min(-15.0, low - 5)), min(300.0, max(60.0, high + 5))]


def forest(comparison: pd.DataFrame, margin: float) -> go.Figure:
    """Overhead (%) of each arm against the baseline per case, with its 95 % CI, on the seed's
    verdict bands and the equivalence margin. Positive = the arm is slower."""
    title = "Overhead against the baseline, 95 % CI"
    rows = _forest_rows(comparison)
    if rows.empty:
        return message(title, "nothing to compare: no case has results in two arms")
    x_range = _overhead_range(rows["oh_low"], rows["oh"], rows["oh_high"])
    fig = go.Figure()
    for x0, x1, label, colour in BANDS:
        fig.add_vrect(x0=x0, x1=x_range[1] if x1 is None else x1, fillcolor=colour, line_width=0, layer="below",
                      annotation_text=label, annotation_position="top left", annotation_font_size=11)
    fig.add_vrect(x0=-100 * margin, x1=100 * margin, fillcolor="rgba(44,160,44,0.22)", line_width=0, layer="below")
    for edge in (-100 * margin, 100 * margin):
        fig.add_vline(x=edge, line_dash="dot", line_color="#2ca02c", line_width=1)
    fig.add_vline(x=0, line_color="#444", line_width=1)
    for category, (label, colour) in VERDICT_STYLE.items():
        part = rows[rows["category"] == category]
        if part.empty:
            continue
        fig.add_trace(go.Scatter(
            x=part["oh"], y=[wrapped(label, 60) for label in part["label"]], mode="markers", name=label,
            marker={"color": colour, "size": 11, "symbol": "diamond" if category == "too_few" else "circle"},
            error_x={"type": "data", "symmetric": False, "array": (part["oh_high"] - part["oh"]).fillna(0),
                     "arrayminus": (part["oh"] - part["oh_low"]).fillna(0), "color": colour, "thickness": 2},
            customdata=[plain(v) for v in part["verdict"]],
            hovertemplate="%{y}<br>%{customdata}<extra></extra>",
        ))
    fig.update_layout(
        template=TEMPLATE, title={"text": title, "y": 0.98, "yanchor": "top"}, height=200 + 44 * len(rows),
        xaxis={"title": f"overhead of the arm (%) — dotted: ±{100 * margin:g} % equivalence margin",
               "range": x_range, "zeroline": False},
        yaxis={"autorange": "reversed", "title": None},
        legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom"},
        margin={"l": 20, "r": 20, "t": 90, "b": 50},
    )
    return fig


# --------------------------------------------------------------------------- decomposition

#: effect -> (panel title, colour) of the decomposition's forest plot, in panel order.
EFFECT_STYLE = {
    "isolation": ("isolation: isolated vs native", "#1f77b4"),
    "stack": ("software stack: rootfs vs native", "#ff7f0e"),
    "interaction": ("interaction (0: the two multiply)", "#9467bd"),
    "total": ("total: container vs native", "#7f7f7f"),
}


def decomposition(effects: pd.DataFrame) -> go.Figure:
    """One forest panel per effect of ``stats.decompose`` (overhead %, 95 % CI), cases on a shared axis
    and one overhead range for all panels, so that the effects compare at a glance.

    Positive = slower. A point without a bar had too few invocations for a CI.
    """
    title = "The container's overhead split into isolation, software stack and their interaction, 95 % CI"
    rows = effects[np.isfinite(effects["ratio"].astype(float))] if not effects.empty else effects
    if rows.empty:
        return message(title, "no decomposition: it needs a native arm and an isolated or rootfs arm (see the note above)")
    present = [name for name in EFFECT_STYLE if name in set(rows["effect"])]
    labels = [case_label(b, c, m) for b, c, m in rows[["benchmark", "case", "metric"]].itertuples(index=False)]
    rows = rows.assign(label=[wrapped(label, 40) for label in labels])
    fig = make_subplots(rows=1, cols=len(present), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[plain(EFFECT_STYLE[name][0]) for name in present])
    x_range = _overhead_range(*(100 * rows[c].astype(float) for c in ("overhead_low", "overhead", "overhead_high")))
    for col, name in enumerate(present, start=1):
        part = rows[rows["effect"] == name]
        colour = EFFECT_STYLE[name][1]
        fig.add_trace(go.Scatter(
            x=100 * part["overhead"], y=part["label"], mode="markers", name=plain(name), showlegend=False,
            marker={"color": colour, "size": 10},
            error_x={"type": "data", "symmetric": False, "color": colour, "thickness": 2,
                     "array": (100 * (part["overhead_high"] - part["overhead"])).fillna(0),
                     "arrayminus": (100 * (part["overhead"] - part["overhead_low"])).fillna(0)},
            customdata=[plain(f"{formula}: {100 * oh:+.1f} %")
                        for formula, oh in part[["formula", "overhead"]].itertuples(index=False)],
            hovertemplate="%{y}<br>%{customdata}<extra></extra>",
        ), row=1, col=col)
        fig.add_vline(x=0, line_color="#444", line_width=1, row=1, col=col)
        fig.update_xaxes(title_text="overhead (%)", zeroline=False, range=x_range, row=1, col=col)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(template=TEMPLATE, title={"text": plain(title), "y": 0.98, "yanchor": "top"},
                      height=200 + 44 * rows["label"].nunique(), margin={"l": 20, "r": 20, "t": 100, "b": 50})
    return fig


# --------------------------------------------------------------------------- distributions


def _panel_keys(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    return list(frame[["benchmark", "case", "metric"]].drop_duplicates().itertuples(index=False, name=None))


def distributions(samples: pd.DataFrame, arms: Sequence[str]) -> go.Figure:
    """Per case, a box of every sample by arm, with each invocation's median as a point.

    ``samples``: ok result rows (benchmark, case, metric, unit, arm, invocation, value).
    """
    title = "Samples per case and arm (box) with each invocation's median (points)"
    if samples.empty:
        return message(title, "no successful samples in this run")
    keys = _panel_keys(samples)
    fig, columns = _grid([case_label(*key) for key in keys])
    colours = arm_colours(arms)
    for index, key in enumerate(keys):
        row, col = index // columns + 1, index % columns + 1
        panel = samples[(samples["benchmark"] == key[0]) & (samples["case"] == key[1]) & (samples["metric"] == key[2])]
        unit = str(panel["unit"].iloc[0])
        scale, shown = time_scale(panel["value"]) if unit == "s" else (1.0, unit)
        for arm in [a for a in arms if a in set(panel["arm"])]:
            values = panel.loc[panel["arm"] == arm, ["invocation", "value"]]
            medians = values.groupby("invocation")["value"].median()
            name = plain(arm)
            fig.add_trace(go.Box(y=values["value"] / scale, x=[name] * len(values), name=name, legendgroup=arm,
                                 marker_color=colours[arm], boxpoints=False, showlegend=index == 0),
                          row=row, col=col)
            fig.add_trace(go.Scatter(
                y=medians / scale, x=[name] * len(medians), mode="markers", legendgroup=arm, showlegend=False,
                marker={"color": "white", "size": 9, "symbol": "diamond", "line": {"color": colours[arm], "width": 2}},
                customdata=medians.index, name=name,
                hovertemplate=f"{name} invocation %{{customdata}}<br>median %{{y:.4g}} {plain(shown)}<extra></extra>",
            ), row=row, col=col)
        fig.update_yaxes(title_text=plain(shown), type="log" if _spread_is_wide(panel["value"].to_numpy(float)) else None,
                         row=row, col=col)
    fig.update_layout(title=title)
    return fig


# --------------------------------------------------------------------------- telemetry


def _thin(frame: pd.DataFrame) -> pd.DataFrame:
    """At most MAX_POINTS rows, evenly spaced."""
    step = max(1, math.ceil(len(frame) / MAX_POINTS))
    return frame.iloc[::step]


def _with_gaps(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (s), y and invocation of a series, with NaN between invocations so lines do not join them."""
    xs, ys, invs = [], [], []
    for invocation, part in frame.groupby(["case", "invocation"], sort=False):
        xs += [part["t"].to_numpy(), [np.nan]]
        ys += [part[column].to_numpy(dtype=float), [np.nan]]
        invs += [np.full(len(part) + 1, invocation[1])]
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(invs)


def telemetry(telemetry_frame: pd.DataFrame, arms: Sequence[str]) -> go.Figure:
    """SM clock, power and temperature over the run, coloured by arm; shaded spans are invocations."""
    title = "GPU telemetry over the run (shaded: one invocation)"
    columns = [c for c, _ in TELEMETRY_SERIES]
    if telemetry_frame.empty or telemetry_frame[columns].isna().all().all():
        return message(title, "no GPU telemetry in this run (NVML was not available where it ran)")
    frame = telemetry_frame.sort_values("timestamp_ns").assign(
        t=lambda f: (f["timestamp_ns"] - f["timestamp_ns"].min()) / 1e9)
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.05,
                        subplot_titles=[label for _, label in TELEMETRY_SERIES])
    colours = arm_colours(arms)
    _shade_invocations(fig, frame, colours)
    for (arm, gpu), part in frame.groupby(["arm", "gpu_index"], sort=False):
        part = _thin(part)
        for row, (column, label) in enumerate(TELEMETRY_SERIES, start=1):
            x, y, inv = _with_gaps(part, column)
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines", name=plain(f"{arm} (GPU {gpu})"), legendgroup=f"{arm}{gpu}",
                line={"color": colours.get(arm, "#444"), "width": 1.5}, showlegend=row == 1, customdata=inv,
                hovertemplate=f"{plain(arm)} #%{{customdata}}<br>%{{y:.4g}} {plain(label)}<extra></extra>",
            ), row=row, col=1)
    fig.update_xaxes(title_text="seconds since the run's first poll", row=3, col=1)
    fig.update_layout(template=TEMPLATE, title=title, height=720, legend={"orientation": "h", "y": -0.1})
    return fig


def _shade_invocations(fig: go.Figure, frame: pd.DataFrame, colours: dict[str, str]) -> None:
    """One rectangle over the full height per invocation, tinted by its arm."""
    spans = frame.groupby(["arm", "case", "invocation"], sort=False)["t"].agg(["min", "max"]).reset_index()
    for span in spans.itertuples(index=False):
        fig.add_shape(type="rect", xref="x", yref="paper", x0=span.min, x1=span.max, y0=0, y1=1,
                      fillcolor=colours.get(span.arm, "#999"), opacity=0.07, line_width=0, layer="below")


# --------------------------------------------------------------------------- energy and ceilings


def energy(per_work: pd.DataFrame, arms: Sequence[str]) -> go.Figure:
    """Energy per unit of work per case and arm: a box over invocations, each invocation a point.

    ``per_work``: benchmark, case, metric, arm, invocation, value (energy per unit), unit.
    """
    title = "Energy per unit of work (GPU energy while the samples ran)"
    data = per_work[np.isfinite(per_work["value"].astype(float))] if not per_work.empty else per_work
    if data.empty:
        return message(title, "no GPU telemetry in this run: energy per unit of work needs NVML power or energy readings")
    keys = _panel_keys(data)
    fig, columns = _grid([case_label(*key) for key in keys], row_height=300)
    colours = arm_colours(arms)
    for index, key in enumerate(keys):
        row, col = index // columns + 1, index % columns + 1
        panel = data[(data["benchmark"] == key[0]) & (data["case"] == key[1]) & (data["metric"] == key[2])]
        for arm in [a for a in arms if a in set(panel["arm"])]:
            values = panel[panel["arm"] == arm]
            fig.add_trace(go.Box(
                y=values["value"], x=[plain(arm)] * len(values), name=plain(arm), legendgroup=arm,
                marker_color=colours[arm], boxpoints="all", pointpos=0, jitter=0.3, showlegend=index == 0,
                customdata=values["invocation"],
                hovertemplate=f"{plain(arm)} invocation %{{customdata}}<br>%{{y:.4g}}<extra></extra>",
            ), row=row, col=col)
        fig.update_yaxes(title_text=plain(panel["unit"].iloc[0]), rangemode="tozero", row=row, col=col)
    fig.update_layout(title=title)
    return fig


def ceilings(fractions: pd.DataFrame, arms: Sequence[str], devices: Sequence[str] = ()) -> go.Figure:
    """Fraction (%) of the datasheet ceiling reached per case and arm, the best rate measured in the
    run beside it (hover), labelled as measured.

    ``fractions``: benchmark, case, metric, arm, rate, rate_unit, ceiling, source, fraction, measured,
    measured_label (:func:`benchlib.numbers.ceiling_fractions`).
    ``devices`` names the devices of the run, for the message when no ceiling is known.
    """
    title = "Fraction of the datasheet ceiling (median rate / datasheet peak)"
    data = fractions[np.isfinite(fractions["fraction"].astype(float))] if not fractions.empty else fractions
    if data.empty:
        where = f" ({', '.join(devices)})" if devices else ""
        return message(title, f"no hardware ceiling is known for the devices of this run{where}")
    fig = go.Figure()
    colours = arm_colours(arms)
    for arm in [a for a in arms if a in set(data["arm"])]:
        part = data[data["arm"] == arm]
        hover = [plain(f"{format_value(r, u)} of {format_value(c, u)} ({s})"
                       + (f"; {label}: {format_value(m, u)}" if label else ""))
                 for r, u, c, s, m, label in part[["rate", "rate_unit", "ceiling", "source", "measured",
                                                   "measured_label"]].itertuples(index=False)]
        fig.add_trace(go.Bar(
            x=[wrapped(case_label(b, c, m), 30) for b, c, m in part[["benchmark", "case", "metric"]].itertuples(index=False)],
            y=100 * part["fraction"], name=plain(arm), marker_color=colours[arm], customdata=hover,
            hovertemplate="%{x}<br>%{y:.1f} % — %{customdata}<extra></extra>",
        ))
    best = data[np.isfinite(data["measured"].astype(float))].drop_duplicates(["benchmark", "case", "metric"])
    if not best.empty:  # what the run reached, beside the datasheet peak: labelled, never the denominator
        fig.add_trace(go.Scatter(
            x=[wrapped(case_label(b, c, m), 30) for b, c, m in best[["benchmark", "case", "metric"]].itertuples(index=False)],
            y=100 * best["measured"].astype(float) / best["ceiling"].astype(float), mode="markers",
            name=plain(str(best["measured_label"].iloc[0])), marker={"symbol": "diamond", "size": 10, "color": "#222"},
            hovertemplate="%{x}<br>%{y:.1f} % of the datasheet peak<extra>best measured in this run</extra>",
        ))
    fig.add_hline(y=100, line_dash="dot", line_color="#444", annotation_text="datasheet peak")
    fig.update_layout(template=TEMPLATE, title=title, barmode="group", height=420,
                      yaxis={"title": "% of datasheet peak", "rangemode": "tozero"}, legend={"orientation": "h", "y": -0.2})
    return fig


# --------------------------------------------------------------------------- HTML


def to_html(fig: go.Figure, include_plotlyjs: bool) -> str:
    """An HTML fragment of the figure; with ``include_plotlyjs`` it embeds plotly.js (offline)."""
    height = fig.layout.height or 450
    return fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs, config=CONFIG,
                       default_width="100%", default_height=f"{height}px")


def html_table(frame: pd.DataFrame, css_class: str = "benchlib-table") -> str:
    """``frame`` as an HTML table; every header and cell is escaped."""
    head = "".join(f"<th>{html.escape(str(column))}</th>" for column in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(value))}</td>" for value in row) + "</tr>"
        for row in frame.itertuples(index=False, name=None)
    )
    return (f'<div class="benchlib-scroll"><table class="{css_class}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table></div>')


def _cell(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and not np.isfinite(value)):
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{value:.3g}"
    return str(value)
