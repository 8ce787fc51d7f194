"""Figures of one run and of a regime comparison, drawn with matplotlib's object API.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so no GUI
backend and no global figure state is involved; :func:`figure_png` renders one to PNG
bytes with the Agg canvas. The report and ``notebooks/regime_comparison.ipynb`` draw the
same figures from the same functions.

The comparison figures take long tables with a ``regime`` and a ``workload`` column, one
panel per workload and one colour per regime.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

KNOWN_REGIMES = ("cold", "warm", "burst_ready")
PANEL_WIDTH_IN = 5.0
PANEL_HEIGHT_IN = 3.6
DPI = 100
COST_PER_1K_METRIC = "cost_per_1k_requests_usd"


def figure_png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes with the Agg canvas."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def regime_order(regimes: Sequence[str]) -> list[str]:
    """Sort regime names: cold, warm, burst_ready first, then the others alphabetically."""
    unique = list(dict.fromkeys(str(regime) for regime in regimes))
    known = [regime for regime in KNOWN_REGIMES if regime in unique]
    return known + sorted(regime for regime in unique if regime not in KNOWN_REGIMES)


def regime_colors(regimes: Sequence[str]) -> dict[str, str]:
    """Map each regime to a tab10 colour, stable for the three known regimes."""
    order = list(KNOWN_REGIMES) + [r for r in regime_order(regimes) if r not in KNOWN_REGIMES]
    return {regime: f"C{index % 10}" for index, regime in enumerate(order)}


def ecdf_points(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Return the sorted finite values and their empirical cumulative probabilities."""
    x = np.sort(np.asarray(values, dtype=float))
    x = x[np.isfinite(x)]
    y = np.arange(1, x.size + 1) / x.size if x.size else np.array([])
    return x, y


def latency_over_time(requests: pd.DataFrame, replicas: pd.DataFrame, title: str = "") -> Figure:
    """Plot each request's latency at its start time, with the replica count on a second axis.

    Failed requests are red crosses at their latency, or at 0 when none is known. The right
    axis shows replicas and available replicas summed over all functions.
    """
    fig = Figure(figsize=(2 * PANEL_WIDTH_IN, PANEL_HEIGHT_IN))
    ax = fig.add_subplot()
    origin = _time_origin(requests.get("start_s"), replicas.get("t_s"))

    ok = requests[requests["ok"].astype(bool)] if len(requests) else requests
    failed = requests[~requests["ok"].astype(bool)] if len(requests) else requests
    ax.scatter(ok["start_s"] - origin, ok["latency_ms"], s=10, color="C0", label="ok request")
    if len(failed):
        failed_latency = failed["latency_ms"].fillna(0)
        ax.scatter(
            failed["start_s"] - origin,
            failed_latency,
            s=18,
            marker="x",
            color="red",
            label="failed request",
        )
    ax.set_xlabel("time since load start (s)")
    ax.set_ylabel("end-to-end latency (ms)")

    right = ax.twinx()
    if len(replicas):
        totals = replicas.groupby("t_s")[["replicas", "available_replicas"]].sum().sort_index()
        right.step(
            totals.index - origin, totals["replicas"], where="post", color="C1", label="replicas"
        )
        right.step(
            totals.index - origin,
            totals["available_replicas"],
            where="post",
            color="C2",
            linestyle="--",
            label="available replicas",
        )
    right.set_ylabel("replicas, all functions")
    right.set_ylim(bottom=0)

    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    if handles:
        ax.legend(handles=handles, loc="upper left", fontsize="small")
    ax.set_title(title or "Latency over time")
    return fig


def latency_ecdf(latencies_by_label: dict[str, Sequence[float]], title: str = "") -> Figure:
    """Plot one empirical CDF of end-to-end latency per label."""
    fig = Figure(figsize=(PANEL_WIDTH_IN, PANEL_HEIGHT_IN))
    ax = fig.add_subplot()
    for label, values in latencies_by_label.items():
        x, y = ecdf_points(values)
        if x.size:
            ax.step(x, y, where="post", label=f"{label} (n={x.size})")
    _label_ecdf_axes(ax, title or "Latency ECDF")
    return fig


def ecdf_by_regime(requests: pd.DataFrame) -> Figure:
    """Plot the ECDF of successful requests' latency per regime, one panel per workload."""
    ok = requests[requests["ok"].astype(bool)]
    fig, panels = _workload_panels(requests)
    colors = regime_colors(requests["regime"])
    for workload, ax in panels.items():
        rows = ok[ok["workload"] == workload]
        for regime in regime_order(rows["regime"]):
            x, y = ecdf_points(rows.loc[rows["regime"] == regime, "latency_ms"])
            ax.step(x, y, where="post", color=colors[regime], label=f"{regime} (n={x.size})")
        _label_ecdf_axes(ax, f"workload {workload}")
    return fig


def percentile_bars(intervals: pd.DataFrame) -> Figure:
    """Plot p95 and p99 per regime with their confidence intervals, one panel per workload.

    ``intervals`` has columns regime, workload, statistic (``p95``/``p99``), estimate_ms,
    ci_low_ms and ci_high_ms; a missing interval is drawn without an error bar.
    """
    fig, panels = _workload_panels(intervals)
    colors = regime_colors(intervals["regime"])
    statistics = sorted(intervals["statistic"].unique())
    for workload, ax in panels.items():
        rows = intervals[intervals["workload"] == workload]
        regimes = regime_order(rows["regime"])
        width = 0.8 / max(len(regimes), 1)
        for index, regime in enumerate(regimes):
            regime_rows = rows[rows["regime"] == regime].set_index("statistic")
            regime_rows = regime_rows.reindex(statistics)
            positions = np.arange(len(statistics)) + index * width
            estimate = regime_rows["estimate_ms"].to_numpy(dtype=float)
            low = np.nan_to_num(estimate - regime_rows["ci_low_ms"].to_numpy(dtype=float))
            high = np.nan_to_num(regime_rows["ci_high_ms"].to_numpy(dtype=float) - estimate)
            ax.bar(
                positions,
                estimate,
                width,
                color=colors[regime],
                label=regime,
                yerr=np.vstack([low, high]),
                capsize=3,
            )
        ax.set_xticks(np.arange(len(statistics)) + 0.4 - width / 2, statistics)
        ax.set_ylabel("latency (ms), 95% bootstrap CI")
        ax.set_title(f"workload {workload}")
        _legend(ax)
    return fig


def cold_starts_by_stage(cold_starts: pd.DataFrame) -> Figure:
    """Plot cold starts per run for each stage and regime, one panel per workload.

    ``cold_starts`` has columns regime, workload, stage and cold_starts_per_run.
    """
    fig, panels = _workload_panels(cold_starts)
    colors = regime_colors(cold_starts["regime"])
    for workload, ax in panels.items():
        rows = cold_starts[cold_starts["workload"] == workload]
        table = rows.pivot_table(
            index="stage",
            columns="regime",
            values="cold_starts_per_run",
            aggfunc="sum",
            fill_value=0,
        )
        regimes = regime_order(table.columns)
        width = 0.8 / max(len(regimes), 1)
        positions = np.arange(len(table.index))
        for index, regime in enumerate(regimes):
            ax.barh(
                positions + index * width, table[regime], width, color=colors[regime], label=regime
            )
        ax.set_yticks(positions + 0.4 - width / 2, list(table.index))
        ax.set_xlabel("cold starts per run")
        ax.set_title(f"workload {workload}")
        _legend(ax)
    return fig


def cost_vs_latency(runs: pd.DataFrame) -> Figure:
    """Plot each run's cost per 1000 requests against its p95 latency (the RQ3 trade-off).

    ``runs`` has columns regime, workload, latency_p95_ms and cost_per_1k_requests_usd;
    runs without either (no successful request) are left out. Cost per request is drawn,
    not the window cost, because regimes whose load windows differ in length would
    otherwise differ in cost for that reason alone.
    """
    fig, panels = _workload_panels(runs)
    colors = regime_colors(runs["regime"])
    for workload, ax in panels.items():
        rows = runs[(runs["workload"] == workload)].dropna(
            subset=["latency_p95_ms", COST_PER_1K_METRIC]
        )
        for regime in regime_order(rows["regime"]):
            points = rows[rows["regime"] == regime]
            ax.scatter(
                points["latency_p95_ms"],
                points[COST_PER_1K_METRIC],
                color=colors[regime],
                label=regime,
            )
        ax.set_xlabel("p95 latency (ms)")
        ax.set_ylabel("cost per 1000 successful requests (USD)")
        ax.set_title(f"workload {workload}")
        _legend(ax)
    return fig


def replica_timelines(replicas: pd.DataFrame) -> Figure:
    """Plot replicas summed over functions against time since each run's first sample.

    ``replicas`` has columns regime, workload, run_id, t_s and replicas; each run is one line.
    """
    fig, panels = _workload_panels(replicas)
    colors = regime_colors(replicas["regime"])
    for workload, ax in panels.items():
        rows = replicas[replicas["workload"] == workload]
        labelled: set[str] = set()
        for (regime, _run_id), run_rows in rows.groupby(["regime", "run_id"], sort=True):
            totals = run_rows.groupby("t_s")["replicas"].sum().sort_index()
            label = None if regime in labelled else regime
            labelled.add(regime)
            ax.step(
                totals.index - totals.index.min(),
                totals.to_numpy(),
                where="post",
                color=colors[regime],
                alpha=0.8,
                label=label,
            )
        ax.set_xlabel("time since load start (s)")
        ax.set_ylabel("replicas, all functions")
        ax.set_title(f"workload {workload}")
        _legend(ax)
    return fig


def stage_breakdown(stages: pd.DataFrame) -> Figure:
    """Plot the median and p95 duration of each stage per regime, one panel per workload.

    ``stages`` has columns regime, workload, stage, p50_ms and p95_ms; the bar is the median,
    the thin line reaches the p95.
    """
    fig, panels = _workload_panels(stages)
    colors = regime_colors(stages["regime"])
    for workload, ax in panels.items():
        rows = stages[stages["workload"] == workload]
        stage_names = sorted(rows["stage"].unique())
        regimes = regime_order(rows["regime"])
        width = 0.8 / max(len(regimes), 1)
        positions = np.arange(len(stage_names))
        for index, regime in enumerate(regimes):
            regime_rows = rows[rows["regime"] == regime].set_index("stage").reindex(stage_names)
            y = positions + index * width
            ax.barh(y, regime_rows["p50_ms"], width, color=colors[regime], label=regime)
            ax.hlines(y, regime_rows["p50_ms"], regime_rows["p95_ms"], color="black", linewidth=1)
        ax.set_yticks(positions + 0.4 - width / 2, stage_names)
        ax.set_xlabel("stage duration (ms): bar p50, line to p95")
        ax.set_title(f"workload {workload}")
        _legend(ax)
    return fig


def _workload_panels(table: pd.DataFrame) -> tuple[Figure, dict[str, Axes]]:
    workloads = sorted(str(w) for w in table["workload"].unique()) if len(table) else []
    count = max(len(workloads), 1)
    fig = Figure(figsize=(PANEL_WIDTH_IN * count, PANEL_HEIGHT_IN), layout="constrained")
    axes = fig.subplots(1, count, squeeze=False)[0]
    if not workloads:
        axes[0].text(0.5, 0.5, "no data", ha="center", va="center")
    return fig, dict(zip(workloads, axes, strict=False))


def _label_ecdf_axes(ax, title: str) -> None:
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("share of successful requests")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    _legend(ax, loc="lower right")


def _legend(ax, loc: str = "best") -> None:
    """Add a legend, or a "no data" note when nothing was drawn on ``ax``."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc=loc)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def _time_origin(*series: pd.Series | None) -> float:
    starts = [float(s.min()) for s in series if s is not None and len(s) and s.notna().any()]
    return min(starts) if starts else 0.0
