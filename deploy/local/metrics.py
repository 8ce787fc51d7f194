"""Prometheus metrics under the names the OpenFaaS gateway exports.

``function_name`` is ``NAME.NAMESPACE`` (for example ``noop.openfaas-fn``), as the gateway
labels it.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterable

HISTOGRAM_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""The Prometheus client's default buckets, which the gateway's histogram uses."""


class _Histogram:
    def __init__(self) -> None:
        self.bucket_counts = [0] * len(HISTOGRAM_BUCKETS_S)
        self.count = 0
        self.total_s = 0.0

    def observe(self, value_s: float) -> None:
        index = bisect.bisect_left(HISTOGRAM_BUCKETS_S, value_s)
        if index < len(self.bucket_counts):
            self.bucket_counts[index] += 1
        self.count += 1
        self.total_s += value_s


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class GatewayMetrics:
    """Invocation counters, a duration histogram and the replica gauge."""

    def __init__(self) -> None:
        self._invocations: collections.Counter[tuple[str, str]] = collections.Counter()
        self._durations: dict[str, _Histogram] = {}

    def record(self, function_name: str, status_code: int, duration_s: float) -> None:
        self._invocations[(function_name, str(status_code))] += 1
        self._durations.setdefault(function_name, _Histogram()).observe(duration_s)

    def render(self, service_counts: Iterable[tuple[str, int]]) -> str:
        """Return the Prometheus text format (version 0.0.4)."""
        lines = [
            "# HELP gateway_function_invocation_total Function metrics",
            "# TYPE gateway_function_invocation_total counter",
        ]
        for (name, code), count in sorted(self._invocations.items()):
            lines.append(
                f'gateway_function_invocation_total{{code="{code}",'
                f'function_name="{_escape(name)}"}} {count}'
            )

        lines += [
            "# HELP gateway_functions_seconds Function time taken",
            "# TYPE gateway_functions_seconds histogram",
        ]
        for name, histogram in sorted(self._durations.items()):
            label = f'function_name="{_escape(name)}"'
            cumulative = 0
            for bound, count in zip(HISTOGRAM_BUCKETS_S, histogram.bucket_counts, strict=True):
                cumulative += count
                lines.append(
                    f'gateway_functions_seconds_bucket{{{label},le="{bound}"}} {cumulative}'
                )
            lines.append(f'gateway_functions_seconds_bucket{{{label},le="+Inf"}} {histogram.count}')
            lines.append(f"gateway_functions_seconds_sum{{{label}}} {histogram.total_s}")
            lines.append(f"gateway_functions_seconds_count{{{label}}} {histogram.count}")

        lines += [
            "# HELP gateway_service_count Current count of replicas for function",
            "# TYPE gateway_service_count gauge",
        ]
        for name, replicas in sorted(service_counts):
            lines.append(f'gateway_service_count{{function_name="{_escape(name)}"}} {replicas}')
        return "\n".join(lines) + "\n"
