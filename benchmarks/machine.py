"""The description of the measuring machine that every benchmark page records."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_description() -> str:
    """Return the CPU model, the logical CPU count, the OS release and the Python version."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )
