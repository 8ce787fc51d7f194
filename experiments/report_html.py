"""The HTML and Markdown rendering of the comparison report.

The HTML page is self-contained: figures are embedded as base64 PNG data URIs, the style
sheet is inline, and the page loads nothing from the network and has no links.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from experiments.report import SweepData

logger = logging.getLogger(__name__)

FLOAT_FORMAT = "{:.6g}"

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; }
.note { background: #f7f7e8; padding: 0.5em 1em; border-left: 4px solid #cc8; }
"""

_COST_POINTER = (
    "Cost columns cover each run's load window only; the cost section below says what is "
    "priced. Compare regimes by cost per 1000 requests and cost per hour, not by the "
    "window cost."
)

_SECTIONS = (
    (
        "latency_ecdf",
        "Latency ECDF per regime and workload",
        "Empirical CDF of end-to-end latency of successful requests, pooled over repetitions.",
    ),
    (
        "latency_percentiles",
        "p95 and p99 with bootstrap 95% confidence intervals",
        "Percentile bootstrap (scipy.stats.bootstrap) over the successful requests of all "
        "repetitions of a regime and workload, pooled; N is the pooled request count. Pooling "
        "treats requests as independent, so run-to-run variation is not in the interval.",
    ),
    (
        "cold_starts",
        "Cold starts per stage and regime",
        "Stage invocations that were the first call served by their replica, per run.",
    ),
    (
        "cost_vs_p95",
        "Cost per 1000 requests against p95 latency",
        "One point per run: the priced cost of its load window (busy GB-s, idle GB-s of kept "
        "replicas and requests) divided by its successful requests, times 1000, against that "
        "run's p95 end-to-end latency. The table keeps the absolute window cost "
        "(cost_total_usd) and window length (cost_window_s), and the cost per hour of the "
        "replicas kept in the window: time-weighted mean (kept_usd_per_hour) and minimum "
        "(standing_usd_per_hour).",
    ),
    (
        "replica_timelines",
        "Replica timelines",
        "Replicas summed over all functions, sampled every second during the load; one line "
        "per run.",
    ),
    (
        "stage_breakdown",
        "Per-stage latency breakdown",
        "Duration of successful invocations per stage: bar at the median, line to the p95.",
    ),
)


def render_html(
    data: SweepData,
    tables: dict[str, pd.DataFrame],
    figures: dict[str, bytes],
    warmup_rule: str,
    cost_rule: str = "",
    notes: Sequence[str] = (),
) -> str:
    """Render the whole report as one HTML page.

    ``cost_rule`` is printed next to the cost figure, and each of ``notes`` as a
    highlighted line under the header.
    """
    runs = data.runs
    repetitions = runs.groupby(["regime", "workload"])["run_id"].nunique()
    repetition_text = ", ".join(
        f"{regime} / {workload}: N={count}" for (regime, workload), count in repetitions.items()
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Regime comparison: {_text(data.title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Regime comparison: {_text(data.title)}</h1>",
        "<p>",
        f"Tracking store: <code>{_text(data.tracking_uri)}</code>. ",
        f"Parent run: <code>{_text(data.parent_run_id or 'none (whole experiment)')}</code>. ",
        f"{len(runs)} job runs with requests. Repetitions per regime and workload: "
        f"{_text(repetition_text or 'none')}.",
        f" Built {_text(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}.",
        "</p>",
        f'<p class="note">{_text(warmup_rule)}</p>',
    ]
    statuses = runs["status"].value_counts()
    if set(statuses.index) - {"FINISHED"}:
        counts = ", ".join(f"{status}: {count}" for status, count in statuses.items())
        parts.append(
            f'<p class="note">Not every run finished ({_text(counts)}); failed and '
            "killed runs that recorded requests are included with what they measured.</p>"
        )
    if data.missing_tables:
        parts.append(
            f'<p class="note">Missing tables, left out of the figures: '
            f"{_text('; '.join(data.missing_tables))}</p>"
        )

    parts.extend(f'<p class="note">{_text(note)}</p>' for note in notes)

    parts.append("<h2>Summary</h2>")
    parts.append(_html_table(tables["summary"]))
    parts.append(f'<p class="note">{_text(_COST_POINTER)}</p>')
    for name, heading, caption in _SECTIONS:
        parts.append(f"<h2>{_text(heading)}</h2><p>{_text(caption)}</p>")
        if name == "cost_vs_p95" and cost_rule:
            parts.append(f'<p class="note">{_text(cost_rule)}</p>')
        if name in figures:
            encoded = base64.b64encode(figures[name]).decode("ascii")
            parts.append(f'<img alt="{_text(heading)}" src="data:image/png;base64,{encoded}">')
        table_name = {
            "latency_percentiles": "latency_ci",
            "cost_vs_p95": "cost",
            "stage_breakdown": "stages",
        }.get(name, name)
        if table_name in tables:
            parts.append(_html_table(tables[table_name]))
    parts.append("<h2>Every metric, mean over repetitions</h2>")
    parts.append(_html_table(tables["metrics_by_group"]))
    parts.append("<h2>Every metric of every run</h2>")
    parts.append(_html_table(tables["metrics"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def to_markdown(table: pd.DataFrame) -> str:
    """Render ``table`` as a GitHub-flavoured Markdown table (numbers to 6 significant digits)."""
    header = [str(column) for column in table.columns]
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(_format(value)) for value in row) + " |")
    return "\n".join(lines) + "\n"


def _html_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "<p>No data.</p>"
    formatted = table.map(_format)
    return formatted.to_html(index=False, escape=True, border=0, na_rep="")


def _format(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else FLOAT_FORMAT.format(value)
    return "" if value is None else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _text(value: str) -> str:
    return html.escape(str(value), quote=True)
