"""The price sheet that turns GB-seconds and request counts into US dollars.

Defaults are AWS Lambda x86 list prices in US East (N. Virginia), from
https://aws.amazon.com/lambda/pricing/ (list prices as of 2026-12; check the page before
publishing). The duration price is the first tier (up to 6 billion GB-s a month); the free
tier is ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

AWS_LAMBDA_PRICING_URL = "https://aws.amazon.com/lambda/pricing/"
REQUEST_USD_PER_MILLION = 0.20
DURATION_USD_PER_GB_S = 0.0000166667
PROVISIONED_USD_PER_GB_S = 0.0000041667


@dataclass
class PriceSheet:
    """Prices in US dollars for one platform.

    ``request_usd_per_million`` is charged per function invocation,
    ``duration_usd_per_gb_s`` per GB-second of invocation duration (busy time), and
    ``provisioned_usd_per_gb_s`` per GB-second that a replica is kept ready (idle time).
    """

    name: str = "aws-lambda-x86"
    request_usd_per_million: float = REQUEST_USD_PER_MILLION
    duration_usd_per_gb_s: float = DURATION_USD_PER_GB_S
    provisioned_usd_per_gb_s: float = PROVISIONED_USD_PER_GB_S
    source: str = f"{AWS_LAMBDA_PRICING_URL} (list prices as of 2026-12)"

    def __post_init__(self) -> None:
        for field_name in (
            "request_usd_per_million",
            "duration_usd_per_gb_s",
            "provisioned_usd_per_gb_s",
        ):
            value = getattr(self, field_name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(
                    f"Price sheet {self.name!r}: {field_name} must be a number >= 0, got "
                    f"{value!r}; fix it in the pricing config."
                )

    def requests_usd(self, invocations: int) -> float:
        return invocations * self.request_usd_per_million / 1_000_000

    def busy_usd(self, busy_gb_s: float) -> float:
        return busy_gb_s * self.duration_usd_per_gb_s

    def idle_usd(self, idle_gb_s: float) -> float:
        return idle_gb_s * self.provisioned_usd_per_gb_s
