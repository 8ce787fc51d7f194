"""Entry point of ``python -m experiments`` and of the ``experiments`` console script."""

from __future__ import annotations

import sys

from experiments.cli import main as _main


def main() -> None:
    sys.exit(_main())


if __name__ == "__main__":
    main()
