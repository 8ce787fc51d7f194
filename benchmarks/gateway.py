"""Measure what the embedded runtime adds to a call, against calling the same replica directly.

Run ``python benchmarks/gateway.py [--out docs/benchmarks-gateway.md]``; it takes about 20 s.
It deploys the no-op test function with one replica, then measures sequential latency
(p50, p99) and throughput at 1, 4 and 16 concurrent clients, each both through
``/function/noop`` and straight to the replica's port, and writes a Markdown page.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_description  # noqa: E402
from deploy.client import GatewayClient  # noqa: E402
from deploy.models import FunctionDeployment  # noqa: E402

NOOP_FUNCTION = ROOT / "tests" / "deploy" / "noop_function.py"
LATENCY_CALLS = 400
WARMUP_CALLS = 50
THROUGHPUT_DURATION_S = 2.0
CONCURRENCY_LEVELS = (1, 4, 16)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def measure_latency_ms(url: str, calls: int) -> list[float]:
    with httpx.Client(timeout=30) as client:
        for _ in range(WARMUP_CALLS):
            client.post(url, content=b"{}")
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            response = client.post(url, content=b"{}")
            samples.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return samples


def measure_throughput_per_s(url: str, clients: int, duration_s: float) -> tuple[float, int]:
    """Calls per second completed by ``clients`` threads, each with its own connection."""
    stop_at = time.perf_counter() + duration_s
    counts = [0] * clients
    errors = [0] * clients

    def worker(index: int) -> None:
        with httpx.Client(timeout=30) as client:
            while time.perf_counter() < stop_at:
                response = client.post(url, content=b"{}")
                if response.status_code == 200:
                    counts[index] += 1
                else:
                    errors[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started), sum(errors)


def replica_url(pid: int) -> str:
    """Find the URL of the replica process ``pid`` from the port it listens on."""
    for connection in psutil.Process(pid).net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN:
            return f"http://127.0.0.1:{connection.laddr.port}/"
    raise RuntimeError(f"replica process {pid} listens on no TCP port")


def run() -> dict:
    """Serve the runtime from its own process, so that it shares no GIL with the clients."""
    with tempfile.TemporaryDirectory() as run_dir:
        command = [sys.executable, "-m", "deploy.local", "--port", "0", "--run-dir", run_dir]
        runtime = subprocess.Popen(
            [*command, "--log-level", "WARNING"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            runtime_url = runtime.stdout.readline().split()[-1]
            with GatewayClient(runtime_url) as client:
                client.deploy(
                    FunctionDeployment(
                        service="noop",
                        image="local/noop:bench",
                        env_process=f"{sys.executable} {NOOP_FUNCTION}",
                        labels={"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "1"},
                    )
                )
                client.wait_ready("noop")
                pid = client.invoke("noop", b"{}").json()["pid"]
            direct_url = replica_url(pid)
            gateway_url = runtime_url + "/function/noop"

            results: dict = {"latency": {}, "throughput": {}}
            for label, url in (("direct", direct_url), ("runtime", gateway_url)):
                results["latency"][label] = measure_latency_ms(url, LATENCY_CALLS)
            for clients in CONCURRENCY_LEVELS:
                for label, url in (("direct", direct_url), ("runtime", gateway_url)):
                    results["throughput"][(label, clients)] = measure_throughput_per_s(
                        url, clients, THROUGHPUT_DURATION_S
                    )
        finally:
            runtime.send_signal(signal.SIGTERM)
            runtime.wait(timeout=30)
            runtime.stdout.close()
    return results


def render(results: dict, command: str, elapsed_s: float) -> str:
    direct = results["latency"]["direct"]
    via = results["latency"]["runtime"]
    rows = []
    for name, q in (("p50", 50), ("p99", 99)):
        d, v = percentile(direct, q), percentile(via, q)
        rows.append(f"| {name} | {d:.2f} | {v:.2f} | {v - d:+.2f} | {v / d:.2f} |")
    mean_d, mean_v = statistics.fmean(direct), statistics.fmean(via)
    rows.append(
        f"| mean | {mean_d:.2f} | {mean_v:.2f} | {mean_v - mean_d:+.2f} | {mean_v / mean_d:.2f} |"
    )

    throughput_rows = []
    for clients in CONCURRENCY_LEVELS:
        d, d_err = results["throughput"][("direct", clients)]
        v, v_err = results["throughput"][("runtime", clients)]
        throughput_rows.append(f"| {clients} | {d:.0f} | {v:.0f} | {v / d:.2f} | {d_err + v_err} |")

    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "# Embedded runtime: overhead per call and throughput",
            "",
            "What the embedded runtime (`deploy.local`) adds to a call, against calling the same",
            "replica's port directly. The function is the no-op test server",
            "(`tests/deploy/noop_function.py`, standard-library `ThreadingHTTPServer`), one",
            "replica, so these numbers measure the proxy and not a real stage.",
            "",
            f"- Date: {today}",
            f"- Machine: {machine_description()}",
            f"- Command: `{command}` (took {elapsed_s:.0f} s)",
            f"- Latency: {LATENCY_CALLS} sequential POSTs after {WARMUP_CALLS} warm-up calls, one",
            "  keep-alive httpx connection.",
            f"- Throughput: {THROUGHPUT_DURATION_S:g} s per level, each client a thread with its",
            "  own httpx connection. The runtime runs as `python -m deploy.local` in its own",
            "  process, so it shares no GIL with the clients.",
            "",
            "The machine is shared and noisy, so read the ratios rather than the absolute",
            "values. The client threads, the runtime's event loop and the replica share the",
            "same CPUs, so throughput at 16 clients is bounded by the CPU, not by the network.",
            "",
            "## Latency of one call (ms)",
            "",
            "| statistic | direct | through runtime | added | ratio |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "## Throughput (calls per second)",
            "",
            "| concurrent clients | direct | through runtime | ratio | non-200 answers |",
            "|---|---|---|---|---|",
            *throughput_rows,
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs" / "benchmarks-gateway.md",
        help="Markdown file to write the results to",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    results = run()
    command = "python benchmarks/gateway.py"
    page = render(results, command, time.perf_counter() - started)
    args.out.write_text(page)
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
