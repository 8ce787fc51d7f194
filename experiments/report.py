"""The comparison report of a sweep: regimes against each other under each workload.

:func:`build_report` reads the child runs of a sweep (or every job run of an experiment)
from MLflow, with their metrics and their ``tables/*.csv`` artifacts, and writes into one
folder: ``report.html`` (self-contained, figures embedded), ``metrics.csv`` (every metric of
every run), ``metrics.md`` (every metric, mean per regime and workload), the tables behind
each figure as CSV, and the figures as PNG. When a parent run is given, the folder is also
logged as its ``report/`` artifact. The content is described in ``docs/report.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from scipy import stats

from experiments import plots
from experiments.metrics import (
    REQUESTS_PER_COST_UNIT,
    normalize_invocations,
    normalize_replicas,
    normalize_requests,
)
from experiments.report_html import render_html, to_markdown
from experiments.tracking import (
    DEFAULT_REPORTS_DIR,
    PARENT_RUN_TAG,
    TABLES_ARTIFACT_DIR,
    RunNotFoundError,
    TrackingError,
    open_client,
)

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"
REGIME_PARAM = "regime.name"
WORKLOAD_PARAM = "workload.kind"
SEED_PARAM = "seed"
REPEAT_PARAM = "repeat_index"
REPORT_ARTIFACT_DIR = "report"
CI_PERCENTILES = (95, 99)
# Below this many successful requests a group's p95 and p99 both fall between its two
# largest latencies (numpy's linear interpolation), so they add little to the max.
MIN_REQUESTS_FOR_TAIL = 20
CONFIDENCE_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_BATCH = 100
BOOTSTRAP_SEED = 0
SEARCH_PAGE_SIZE = 1000
WARMUP_RULE = (
    "Warm-up calls (the regime's warmup_calls per function, made before the load starts) "
    "are not in the request table: every latency, error and cold-start figure counts "
    "load-phase requests only. Cost counts the replicas kept during the load phase."
)
COST_WINDOW_RULE = (
    "Cost covers each run's load window only (cost_window_s: the span of the replica "
    "timeline, sampled from the start of the load until it ended), so a regime whose "
    "requests take longer pays for a longer window. Priced: every function invocation at "
    "the request price, busy GB-s at the duration price, and idle GB-s of the replicas kept "
    "in the window at the provisioned price. Not priced: warm-up calls, replicas kept before "
    "or after the window (a warm regime keeps paying standing_usd_per_hour when no load "
    "comes), storage and data transfer, the free tier. Compare regimes by "
    "cost_per_1k_requests_usd and the USD per hour figures, not by the window cost."
)
# Params that differ between the repetitions of one group by design, or that name a run's
# own folder. Any other differing param means that the group pools different experiments.
PER_RUN_PARAMS = frozenset({SEED_PARAM, REPEAT_PARAM, "repeat", REGIME_PARAM, WORKLOAD_PARAM})
PER_RUN_PARAM_PREFIXES = ("hydra.",)
PER_RUN_PARAM_SUFFIXES = ("output_dir",)
MAX_VALUES_SHOWN = 3

_RUN_ID = re.compile(r"^[0-9a-zA-Z_-]{1,64}$")


class ReportError(TrackingError):
    """A report could not be built from the requested runs."""


@dataclass
class SweepData:
    """The runs of one sweep with their tables, each row tagged with run_id/regime/workload.

    ``runs`` and the tables hold only runs that recorded at least one request; the others
    are in ``left_out``. ``params`` maps each run id of ``runs`` to its MLflow params.
    """

    title: str
    tracking_uri: str
    parent_run_id: str | None
    runs: pd.DataFrame
    requests: pd.DataFrame
    invocations: pd.DataFrame
    replicas: pd.DataFrame
    missing_tables: list[str] = field(default_factory=list)
    left_out: pd.DataFrame = field(default_factory=pd.DataFrame)
    params: dict[str, dict[str, str]] = field(default_factory=dict)


def build_report(
    parent_run_id: str | None = None,
    experiment_name: str | None = None,
    *,
    tracking_uri: str,
    out_dir: str | Path | None = None,
) -> Path:
    """Build the comparison report of a sweep and return the path of its ``report.html``.

    Give either ``parent_run_id`` (the sweep's parent run) or ``experiment_name`` (every
    run with a ``regime.name`` param in it). ``out_dir`` defaults to
    ``runs/reports/<parent run name or experiment name>``.

    Raises:
        RunNotFoundError: the run or experiment does not exist, or has no job runs.
        ReportError: neither or both of ``parent_run_id`` and ``experiment_name`` are given.
    """
    data = load_sweep(parent_run_id, experiment_name, tracking_uri=tracking_uri)
    folder = Path(out_dir) if out_dir is not None else DEFAULT_REPORTS_DIR / safe_name(data.title)
    folder.mkdir(parents=True, exist_ok=True)

    tables = report_tables(data)
    figures = report_figures(data, tables)
    for name, table in tables.items():
        table.to_csv(folder / f"{name}.csv", index=False)
    data.left_out.to_csv(folder / "left_out.csv", index=False)
    (folder / "metrics.md").write_text(to_markdown(tables["metrics_by_group"]), encoding="utf-8")
    figure_dir = folder / "figures"
    figure_dir.mkdir(exist_ok=True)
    for name, png in figures.items():
        (figure_dir / f"{name}.png").write_bytes(png)
    html_path = folder / "report.html"
    notes = sweep_notes(data, tables)
    page = render_html(data, tables, figures, WARMUP_RULE, COST_WINDOW_RULE, notes)
    html_path.write_text(page, encoding="utf-8")
    logger.info("Report of %s written to %s", data.title, folder)

    if data.parent_run_id:
        client = open_client(tracking_uri)
        try:
            client.log_artifacts(data.parent_run_id, str(folder), REPORT_ARTIFACT_DIR)
        except MlflowException as error:
            raise ReportError(
                f"The report is in {folder}, but logging it to the parent run "
                f"{data.parent_run_id} failed: {error.message}"
            ) from error
    return html_path


def load_sweep(
    parent_run_id: str | None = None,
    experiment_name: str | None = None,
    *,
    tracking_uri: str,
) -> SweepData:
    """Read the job runs of a sweep or an experiment, with their metrics and tables.

    Raises:
        RunNotFoundError: the run or experiment does not exist, or has no job runs.
        ReportError: neither or both selectors are given.
    """
    if (parent_run_id is None) == (experiment_name is None):
        raise ReportError(
            "Give either a parent run id (--parent RUN_ID) or an experiment name "
            "(--experiment NAME) to build a report."
        )
    client = open_client(tracking_uri)
    if parent_run_id is not None:
        parent = _get_parent(client, parent_run_id, tracking_uri)
        runs = _search(
            client,
            [parent.info.experiment_id],
            f"tags.`{PARENT_RUN_TAG}` = '{parent.info.run_id}'",
        )
        title = parent.info.run_name or parent_run_id
        where = f"run {parent_run_id}"
    else:
        assert experiment_name is not None, "exactly one selector is given (checked above)"
        experiment = _get_experiment(client, experiment_name, tracking_uri)
        runs = _search(client, [experiment.experiment_id], "")
        runs = [run for run in runs if REGIME_PARAM in run.data.params]
        title = experiment_name
        where = f"experiment {experiment_name!r}"
    if not runs:
        raise RunNotFoundError(
            f"The {where} in {tracking_uri} has no job runs (runs with a {REGIME_PARAM} param). "
            f"{_how_to_list(tracking_uri)}"
        )

    run_table = _run_table(runs)
    requests, invocations, replicas, missing = _load_tables(client, run_table)
    measured = _measured(run_table, requests)
    left_out = run_table.loc[~measured, _RUN_COLUMNS[:5]].reset_index(drop=True)
    if len(left_out):
        logger.warning(
            "Left %d run(s) without requests out of the report: %s",
            len(left_out),
            ", ".join(left_out["run_name"].astype(str)),
        )
    kept_ids = set(run_table.loc[measured, "run_id"])
    # A run without requests is expected to have no tables; it is listed as left out instead.
    missing_tables = [label for label, run_id in missing if run_id in kept_ids]
    if missing_tables:
        logger.warning(
            "Report built without %d tables: %s", len(missing_tables), "; ".join(missing_tables)
        )
    return SweepData(
        title=title,
        tracking_uri=tracking_uri,
        parent_run_id=parent_run_id,
        runs=run_table[measured].reset_index(drop=True),
        requests=_of_runs(requests, kept_ids),
        invocations=_of_runs(invocations, kept_ids),
        replicas=_of_runs(replicas, kept_ids),
        missing_tables=missing_tables,
        left_out=left_out,
        params={
            run.info.run_id: dict(run.data.params) for run in runs if run.info.run_id in kept_ids
        },
    )


def differing_params(data: SweepData) -> dict[tuple[str, str], dict[str, list[str]]]:
    """Find the params whose values differ between the runs of each regime and workload.

    Returns, per group that pools different settings, each differing key with its sorted
    distinct values (a run without the key contributes ``"(unset)"``). Seeds, repetition
    indices and run folders (:data:`PER_RUN_PARAMS` and the prefixes and suffixes next to
    it) are expected to differ and are ignored.
    """
    found: dict[tuple[str, str], dict[str, list[str]]] = {}
    for (regime, workload), group in _groups(data.runs):
        params = [data.params.get(run_id, {}) for run_id in group["run_id"]]
        keys = sorted({key for run_params in params for key in run_params})
        differing = {}
        for key in keys:
            if _is_per_run_param(key):
                continue
            values = {run_params.get(key, "(unset)") for run_params in params}
            if len(values) > 1:
                differing[key] = sorted(values)
        if differing:
            found[(str(regime), str(workload))] = differing
    return found


def sweep_notes(data: SweepData, tables: dict[str, pd.DataFrame]) -> list[str]:
    """Return the warnings a reader needs before trusting the comparison, one line each.

    They name the runs left out for having no request, the groups that pool runs with
    different params, and the groups with fewer than :data:`MIN_REQUESTS_FOR_TAIL`
    successful requests.
    """
    notes = []
    if len(data.left_out):
        listed = "; ".join(
            f"{row.run_name} ({row.run_id}, {row.status}, {row.regime} / {row.workload})"
            for row in data.left_out.itertuples()
        )
        notes.append(
            f"Runs left out (no request recorded, so not counted in N nor pooled): {listed}."
        )
    for (regime, workload), differing in differing_params(data).items():
        differences = "; ".join(
            f"{key} = {', '.join(values[:MAX_VALUES_SHOWN])}"
            + (", ..." if len(values) > MAX_VALUES_SHOWN else "")
            for key, values in differing.items()
        )
        notes.append(
            f"Warning: {regime} / {workload} pools runs whose params differ: {differences}. "
            "Its statistics mix different settings; give those runs another experiment or "
            "rerun them with the same overrides."
        )
    summary = tables.get("summary", pd.DataFrame())
    if "note" in summary:
        for row in summary[summary["note"] != ""].itertuples():
            notes.append(f"{row.regime} / {row.workload}: {row.note}.")
    return notes


def report_tables(data: SweepData) -> dict[str, pd.DataFrame]:
    """Compute every table of the report, keyed by the CSV name it is written under."""
    latency_ci = percentile_intervals(data.requests)
    return {
        "summary": summary_table(data.runs, latency_ci),
        "latency_ci": latency_ci,
        "cold_starts": cold_start_table(data.invocations, data.runs),
        "stages": stage_table(data.invocations),
        "cost": cost_table(data.runs),
        "metrics": data.runs,
        "metrics_by_group": metrics_by_group(data.runs),
    }


def report_figures(data: SweepData, tables: dict[str, pd.DataFrame]) -> dict[str, bytes]:
    """Draw every figure of the report as PNG bytes, keyed by file name without extension."""
    figures = {
        "latency_ecdf": plots.ecdf_by_regime(data.requests),
        "latency_percentiles": plots.percentile_bars(tables["latency_ci"]),
        "cold_starts": plots.cold_starts_by_stage(tables["cold_starts"]),
        "cost_vs_p95": plots.cost_vs_latency(tables["cost"]),
        "replica_timelines": plots.replica_timelines(data.replicas),
        "stage_breakdown": plots.stage_breakdown(tables["stages"]),
    }
    return {name: plots.figure_png(figure) for name, figure in figures.items()}


def percentile_intervals(
    requests: pd.DataFrame,
    percentiles: Sequence[int] = CI_PERCENTILES,
    *,
    confidence_level: float = CONFIDENCE_LEVEL,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> pd.DataFrame:
    """Estimate latency percentiles per regime and workload with bootstrap confidence intervals.

    Successful requests of every repetition of a regime and workload are pooled into one
    sample, resampled ``n_resamples`` times (percentile method of ``scipy.stats.bootstrap``).
    Pooling treats requests as independent, so run-to-run variation is not in the interval.
    With fewer than two requests the interval is NaN.
    """
    rows = []
    ok = requests[requests["ok"].astype(bool)] if len(requests) else requests
    for (regime, workload), group in _groups(requests):
        latencies = ok.loc[group.index.intersection(ok.index), "latency_ms"].dropna()
        values = latencies.to_numpy(dtype=float)
        for q in percentiles:
            low, high = _bootstrap_interval(values, q, confidence_level, n_resamples, seed)
            rows.append(
                {
                    "regime": regime,
                    "workload": workload,
                    "statistic": f"p{q}",
                    "estimate_ms": float(np.percentile(values, q)) if values.size else np.nan,
                    "ci_low_ms": low,
                    "ci_high_ms": high,
                    "confidence_level": confidence_level,
                    "n_requests": int(values.size),
                    "n_runs": int(group["run_id"].nunique()),
                }
            )
    columns = [
        "regime",
        "workload",
        "statistic",
        "estimate_ms",
        "ci_low_ms",
        "ci_high_ms",
        "confidence_level",
        "n_requests",
        "n_runs",
    ]
    return pd.DataFrame(rows, columns=columns)


def cold_start_table(invocations: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Count cold starts per regime, workload and stage, and per run of that group."""
    columns = [
        "regime",
        "workload",
        "stage",
        "invocations",
        "cold_starts",
        "cold_starts_per_run",
        "cold_start_ratio",
    ]
    if invocations.empty:
        return pd.DataFrame(columns=columns)
    runs_per_group = runs.groupby(["regime", "workload"])["run_id"].nunique()
    table = (
        invocations.groupby(["regime", "workload", "stage"])
        .agg(invocations=("cold_start", "size"), cold_starts=("cold_start", "sum"))
        .reset_index()
    )
    table["cold_starts_per_run"] = [
        row.cold_starts / runs_per_group.get((row.regime, row.workload), 1)
        for row in table.itertuples()
    ]
    table["cold_start_ratio"] = table["cold_starts"] / table["invocations"]
    return table[columns]


def stage_table(invocations: pd.DataFrame) -> pd.DataFrame:
    """Summarize stage durations (ms) and retries per regime, workload and stage.

    ``n`` and the durations cover successful invocations; ``retries`` (attempts beyond the
    first, summed over the group's runs) and ``retries_per_run`` cover every invocation.
    """
    columns = [
        "regime",
        "workload",
        "stage",
        "n",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "mean_ms",
        "retries",
        "retries_per_run",
    ]
    if invocations.empty:
        return pd.DataFrame(columns=columns)
    keys = ["regime", "workload", "stage"]
    ok = invocations[invocations["status"] == "ok"]
    durations = ok.groupby(keys)["duration_ms"].agg(
        n="size",
        p50_ms=lambda s: s.quantile(0.50),
        p95_ms=lambda s: s.quantile(0.95),
        p99_ms=lambda s: s.quantile(0.99),
        mean_ms="mean",
    )
    retries = (
        invocations.assign(retries=invocations["attempts"] - 1)
        .groupby(keys)
        .agg(retries=("retries", "sum"), runs=("run_id", "nunique"))
    )
    table = retries.join(durations, how="left").reset_index()
    table["n"] = table["n"].fillna(0).astype(int)
    table["retries_per_run"] = table["retries"] / table["runs"]
    return table[columns]


def cost_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Select each run's cost and p95 latency: the points of the cost/latency trade-off.

    Runs logged before ``cost_per_1k_requests_usd`` existed get it computed from their
    ``cost_total_usd`` and ``requests_ok``.
    """
    columns = [
        "run_id",
        "run_name",
        "regime",
        "workload",
        "repeat_index",
        "latency_p95_ms",
        "requests_ok",
        "cost_window_s",
        "busy_gb_s",
        "idle_gb_s",
        "cost_requests_usd",
        "cost_busy_usd",
        "cost_idle_usd",
        "cost_total_usd",
        "cost_per_1k_requests_usd",
        "kept_usd_per_hour",
        "standing_usd_per_hour",
    ]
    table = runs.reindex(columns=columns)
    ok = table["requests_ok"].where(table["requests_ok"] > 0)
    derived = table["cost_total_usd"] / ok * REQUESTS_PER_COST_UNIT
    table["cost_per_1k_requests_usd"] = table["cost_per_1k_requests_usd"].fillna(derived)
    return table


def summary_table(runs: pd.DataFrame, latency_ci: pd.DataFrame) -> pd.DataFrame:
    """Build one row per regime and workload: repetitions, pooled p95/p99 with CIs, means.

    ``requests_ok`` is the pooled count of successful requests behind the percentiles, and
    ``note`` flags a group with fewer than :data:`MIN_REQUESTS_FOR_TAIL` of them.
    """
    means = [
        "error_rate",
        "throughput_rps",
        "cold_starts_total",
        "cold_start_request_share",
        "retries_total",
        "busy_gb_s",
        "idle_gb_s",
        "cost_total_usd",
        "cost_window_s",
        "cost_per_1k_requests_usd",
        "kept_usd_per_hour",
        "standing_usd_per_hour",
    ]
    rows = []
    for (regime, workload), group in _groups(runs):
        row = {"regime": regime, "workload": workload, "repetitions": group["run_id"].nunique()}
        for statistic in (f"p{q}" for q in CI_PERCENTILES):
            match = latency_ci[
                (latency_ci["regime"] == regime)
                & (latency_ci["workload"] == workload)
                & (latency_ci["statistic"] == statistic)
            ]
            if len(match):
                found = match.iloc[0]
                row["requests_ok"] = int(found["n_requests"])
                row[f"{statistic}_ms"] = found["estimate_ms"]
                row[f"{statistic}_ci_ms"] = _format_interval(
                    found["ci_low_ms"], found["ci_high_ms"]
                )
        row.setdefault("requests_ok", 0)
        row["note"] = _sample_size_note(row["requests_ok"])
        for metric in means:
            if metric in group:
                row[f"mean {metric}"] = group[metric].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def metrics_by_group(runs: pd.DataFrame) -> pd.DataFrame:
    """Average every metric (rows) over the repetitions of each regime and workload (columns)."""
    metric_columns = [c for c in runs.columns if c not in _RUN_COLUMNS]
    if runs.empty or not metric_columns:
        return pd.DataFrame(columns=["metric"])
    means = runs.groupby(["regime", "workload"])[metric_columns].mean()
    means.index = [f"{regime} / {workload}" for regime, workload in means.index]
    table = means.T.sort_index()
    table.index.name = "metric"
    return table.reset_index()


def safe_name(name: str) -> str:
    """Turn a run or experiment name into a folder name that stays inside its parent."""
    cleaned = re.sub(r"[^\w.-]", "_", name).strip("._")
    return cleaned or "report"


def report_main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m experiments report``; return the exit code (0 on success, 2 on error)."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments report",
        description="Build the regime comparison report of a sweep from MLflow.",
    )
    selector = parser.add_mutually_exclusive_group(required=True)
    selector.add_argument("--parent", metavar="RUN_ID", help="the sweep's parent run id")
    selector.add_argument("--experiment", metavar="NAME", help="use every job run of NAME")
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: runs/reports/<sweep or experiment name>)",
    )
    args = parser.parse_args(argv)
    try:
        path = build_report(
            args.parent, args.experiment, tracking_uri=args.tracking_uri, out_dir=args.out
        )
    except TrackingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


def ui_main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m experiments ui``; the implementation is :func:`experiments.ui.ui_main`."""
    from experiments.ui import ui_main as run_ui

    return run_ui(argv)


_RUN_COLUMNS = ("run_id", "run_name", "status", "regime", "workload", "seed", "repeat_index")


def _measured(runs: pd.DataFrame, requests: pd.DataFrame) -> pd.Series:
    """Mark the runs that recorded a request, by their ``requests_total`` metric or table."""
    in_table = requests.groupby("run_id").size() if len(requests) else pd.Series(dtype=int)
    table_counts = runs["run_id"].map(in_table).fillna(0)
    if "requests_total" in runs:
        metric_counts = pd.to_numeric(runs["requests_total"], errors="coerce").fillna(0)
    else:
        metric_counts = pd.Series(0, index=runs.index)
    return (table_counts > 0) | (metric_counts > 0)


def _of_runs(table: pd.DataFrame, run_ids: set[str]) -> pd.DataFrame:
    return table[table["run_id"].isin(run_ids)].reset_index(drop=True)


def _is_per_run_param(key: str) -> bool:
    return (
        key in PER_RUN_PARAMS
        or key.startswith(PER_RUN_PARAM_PREFIXES)
        or key.endswith(PER_RUN_PARAM_SUFFIXES)
    )


def _sample_size_note(count: int) -> str:
    """Return the warning for a group with few successful requests, or "" for enough."""
    if count == 0:
        return "no successful request, so no latency percentile"
    if count >= MIN_REQUESTS_FOR_TAIL:
        return ""
    return (
        f"few requests ({count} successful, fewer than {MIN_REQUESTS_FOR_TAIL}): intervals "
        "are wide, and p95 and p99 lie between the two largest latencies, so p99 is "
        "about the max"
    )


def _get_parent(client: MlflowClient, run_id: str, uri: str) -> Run:
    if not _RUN_ID.match(run_id):
        raise RunNotFoundError(
            f"{run_id!r} is not an MLflow run id (letters, digits, - and _ only). "
            f"{_how_to_list(uri)}"
        )
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        raise RunNotFoundError(
            f"No MLflow run with id {run_id} in {uri}. {_how_to_list(uri)}"
        ) from error


def _get_experiment(client: MlflowClient, name: str, uri: str):
    try:
        experiment = client.get_experiment_by_name(name)
        known = [e.name for e in client.search_experiments()] if experiment is None else []
    except MlflowException as error:
        raise TrackingError(f"Could not read experiments from {uri}: {error.message}") from error
    if experiment is None:
        raise RunNotFoundError(
            f"No MLflow experiment named {name!r} in {uri}; it has: "
            f"{', '.join(repr(k) for k in known) or 'no experiments'}. {_how_to_list(uri)}"
        )
    return experiment


def _how_to_list(uri: str) -> str:
    return (
        f"List experiments with `MLFLOW_TRACKING_URI={uri} mlflow experiments search`, their "
        f"runs with `MLFLOW_TRACKING_URI={uri} mlflow runs list --experiment-id ID`, or browse "
        f"them with `python -m experiments ui --tracking-uri {uri}`."
    )


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    runs: list[Run] = []
    page_token = None
    try:
        while True:
            page = client.search_runs(
                experiment_ids, filter_string, max_results=SEARCH_PAGE_SIZE, page_token=page_token
            )
            runs.extend(page)
            page_token = page.token
            if not page_token:
                return runs
    except MlflowException as error:
        raise TrackingError(f"Searching MLflow runs failed: {error.message}") from error


def _run_table(runs: list[Run]) -> pd.DataFrame:
    rows = []
    for run in runs:
        params = run.data.params
        row = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "regime": params.get(REGIME_PARAM, "unknown"),
            "workload": params.get(WORKLOAD_PARAM, "unknown"),
            "seed": params.get(SEED_PARAM, ""),
            "repeat_index": params.get(REPEAT_PARAM, ""),
        }
        row.update(run.data.metrics)
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(["regime", "workload", "repeat_index", "run_name"]).reset_index(
        drop=True
    )


def _load_tables(
    client: MlflowClient, runs: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[tuple[str, str]]]:
    """Download and normalize every run's tables; list each missing one as (label, run id)."""
    loaded: dict[str, list[pd.DataFrame]] = {"requests": [], "invocations": [], "replicas": []}
    normalizers = {
        "requests": normalize_requests,
        "invocations": normalize_invocations,
        "replicas": normalize_replicas,
    }
    missing: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="vs-report-") as folder, _no_progress_bar():
        for run in runs.itertuples():
            for name, normalize in normalizers.items():
                path = _download_table(client, run.run_id, name, Path(folder) / run.run_id)
                if path is None:
                    missing.append((f"{run.run_name} ({run.run_id}): {name}.csv", run.run_id))
                table = normalize(_read_csv(path) if path is not None else None)
                table = table.assign(
                    run_id=run.run_id,
                    regime=run.regime,
                    workload=run.workload,
                    repeat_index=run.repeat_index,
                )
                loaded[name].append(table)
    frames = [pd.concat(loaded[name], ignore_index=True) for name in normalizers]
    return frames[0], frames[1], frames[2], missing


@contextlib.contextmanager
def _no_progress_bar():
    """Turn off MLflow's per-download progress bar (one per table would flood the terminal)."""
    name = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    previous = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _download_table(client: MlflowClient, run_id: str, name: str, folder: Path) -> Path | None:
    """Download ``tables/<name>.csv`` of a run one file at a time (no progress bar)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        local = client.download_artifacts(run_id, f"{TABLES_ARTIFACT_DIR}/{name}.csv", str(folder))
    except (MlflowException, OSError) as error:
        logger.warning(
            "Run %s has no %s/%s.csv artifact: %s", run_id, TABLES_ARTIFACT_DIR, name, error
        )
        return None
    path = Path(local)
    return path if path.is_file() else None


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, keep_default_na=True, na_values=[""])
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _groups(table: pd.DataFrame):
    if table.empty:
        return []
    return table.groupby(["regime", "workload"], sort=True)


def _bootstrap_interval(
    values: np.ndarray, q: int, confidence_level: float, n_resamples: int, seed: int
) -> tuple[float, float]:
    if values.size < 2 or np.all(values == values[0]):
        return (float(values[0]), float(values[0])) if values.size >= 2 else (np.nan, np.nan)
    result = stats.bootstrap(
        (values,),
        lambda sample, axis: np.percentile(sample, q, axis=axis),
        n_resamples=n_resamples,
        batch=BOOTSTRAP_BATCH,
        vectorized=True,
        confidence_level=confidence_level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _format_interval(low: float, high: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    return f"[{low:.1f}, {high:.1f}]"
