"""The ``experiments`` command: ``run`` (Hydra), ``report`` and ``ui``.

``run`` hands the rest of the command line to Hydra, so ``-m``, ``--cfg job``, ``--help``
and ``--shell-completion`` behave as in any Hydra app. A job that fails is logged in one
line (the traceback only with ``HYDRA_FULL_ERROR=1``), and the sweep goes on. The command
exits 1 when a job failed and 130 when a job was interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from experiments.config import MASK, SECRET_KEYS, URL_PASSWORD, register_configs
from experiments.errors import ExperimentError

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "conf"
COMMANDS = ("run", "report", "ui")
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

USAGE = """\
usage: experiments COMMAND [ARGS...]

commands:
  run      compose a config with Hydra, deploy the pipeline, drive the load, record the run
           (experiments run --help lists the config groups and their options)
  report   compare finished runs from MLflow (experiments report --help)
  ui       open the MLflow UI on the tracking store (experiments ui --help)
"""

_job_outcomes: list[str] = []
"""Status of each job finished in this process: FINISHED, FAILED or KILLED."""

register_configs()


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def _hydra_job(cfg: DictConfig) -> str:
    """Run one job and return its status, which Hydra keeps as the job's return value."""
    from experiments.runner import run_job

    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    try:
        status = run_job(cfg, output_dir, list(hydra_config.overrides.task))
    except ExperimentError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            logger.exception("The job failed")
        else:
            logger.error("The job failed: %s", exc)
        status = "FAILED"
    _job_outcomes.append(status)
    return status


def _redact_secret_overrides(args: Sequence[str]) -> None:
    """Mask secret values given as overrides in every log record of this process.

    Hydra logs the overrides of each sweep job before any job can install a filter, so
    the values of ``...password=``, ``...secret_key=`` and ``...access_key=`` overrides
    are replaced by ``***`` when a record is created.
    """
    secrets: set[str] = set()
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~").rsplit(".", 1)[-1] in SECRET_KEYS and value:
            secrets.add(value)
            secrets.update(_override_values(arg, value))
        # A password written into a URL (user:password@host) is masked too; the config
        # check then rejects the URL.
        secrets.update(URL_PASSWORD.findall(value))
    if not secrets:
        return
    ordered = sorted(secrets, key=len, reverse=True)
    make_record = logging.getLogRecordFactory()

    def masking_factory(*factory_args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*factory_args, **kwargs)
        message = record.getMessage()
        masked = message
        for secret in ordered:
            masked = masked.replace(secret, MASK)
        if masked != message:
            record.msg, record.args = masked, None
        return record

    logging.setLogRecordFactory(masking_factory)


def _override_values(arg: str, value: str) -> set[str]:
    """Return each value an override can take: the elements of ``a,b`` or ``choice(a,b)``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    values = {part for part in value.split(",") if part}
    try:
        override = OverridesParser.create().parse_overrides([arg])[0]
        if override.is_sweep_override():
            values.update(override.sweep_string_iterator())
        else:
            values.add(str(override.value()))
    except (HydraException, ValueError):
        # Sweeps such as glob() need a config loader; the comma split above still applies.
        pass
    return {item for item in values if item}


def run_command(args: Sequence[str], program: str = "experiments run") -> int:
    """Run one job, or a sweep with ``-m``; return the process exit status.

    ``program`` is the name Hydra shows in help and registers for shell completion.
    """
    _job_outcomes.clear()
    _redact_secret_overrides(args)
    saved_argv = sys.argv
    sys.argv = [program, *args]
    try:
        _hydra_job()
    finally:
        sys.argv = saved_argv
    if "KILLED" in _job_outcomes:
        return EXIT_INTERRUPTED
    if "FAILED" in _job_outcomes:
        return EXIT_FAILED
    return 0


def _completion_query(args: Sequence[str]) -> bool:
    return any(arg in ("-sc", "--shell-completion") for arg in args) and any(
        arg.startswith("query=") for arg in args
    )


def complete(args: Sequence[str]) -> int:
    """Print the completions of the command line in ``COMP_LINE``.

    Hydra's bash function calls ``experiments -sc query=bash`` with the line being typed.
    The first word after the program name is completed against the commands. After ``run``,
    the command word is removed from the line and Hydra completes the overrides.
    """
    line = os.environ.get("COMP_LINE", "")
    words = line.split(" ")
    if len(words) <= 2:
        prefix = words[1] if len(words) == 2 else ""
        print(" ".join(command for command in COMMANDS if command.startswith(prefix)))
        return 0
    if words[1] != "run":
        return 0
    stripped = " ".join([words[0], *words[2:]])
    os.environ["COMP_LINE"] = stripped
    point = int(os.environ.get("COMP_POINT", len(line)))
    os.environ["COMP_POINT"] = str(max(point - (len(line) - len(stripped)), 0))
    return run_command(list(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``experiments COMMAND ...`` and return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if _completion_query(args):
        return complete(args)
    if any(arg in ("-sc", "--shell-completion") for arg in args):
        # ``--shell-completion install=bash`` prints the script that registers the program.
        return run_command(args, program="experiments")
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else EXIT_USAGE
    command, rest = args[0], args[1:]
    if command == "run":
        try:
            return run_command(rest)
        except KeyboardInterrupt:
            print("experiments: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    if command == "report":
        from experiments.report import report_main

        return int(report_main(rest) or 0)
    if command == "ui":
        from experiments.ui import ui_main

        return int(ui_main(rest) or 0)
    print(
        f"experiments: unknown command {command!r}; choose one of {', '.join(COMMANDS)}.",
        file=sys.stderr,
    )
    print(USAGE, end="", file=sys.stderr)
    return EXIT_USAGE
