"""Command line of the pipeline package: python -m pipeline run VIDEO | warm.

``run`` starts every function on loopback, runs the chain once on VIDEO and prints the
transcripts, the detections and a per-stage timing table. It exits 0 on success, 1 when a
stage fails (the message names the stage and the input) and 2 on a usage error.

``warm`` loads the librosa stage once, so numba compiles librosa's functions and writes
them to its on-disk cache (``__pycache__`` beside librosa's sources, or ``NUMBA_CACHE_DIR``
when set). Function processes started afterwards with the same Python load them from that
cache instead of compiling, so the first cold start of a new install costs the same as the
later ones. It exits 0 once the stage is loaded, 2 on an invalid ``VS_STAGE_CONFIG``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_WORKDIR = Path("runs") / "pipeline-run"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
JIT_CACHED_STAGE = "librosa"
"""The stage whose engine compiles with numba on first load; ``warm`` loads it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Run the VideoSearcher chain once on a video, with every function on loopback.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the whole chain once on a video file")
    run.add_argument("video", type=Path, help="path of the video (or audio) file")
    run.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help=f"folder for the store and the function logs (default {DEFAULT_WORKDIR}/<id>)",
    )
    run.add_argument(
        "--config-json",
        default="{}",
        help='function name -> config fields, as JSON, e.g. \'{"asr": {"engine": "x"}}\'',
    )
    run.add_argument("--request-id", default=None, help="request id (default: a new uuid4 hex)")
    run.add_argument("--json", action="store_true", help="print the summary as JSON instead")
    run.add_argument("-v", "--verbose", action="store_true", help="log the chain's progress")
    commands.add_parser(
        "warm",
        help="load the librosa stage once so numba writes its JIT cache to disk",
        description=(
            "Load the librosa stage (config from VS_STAGE_CONFIG, else the defaults) so that "
            "numba compiles librosa's functions once and caches them on disk."
        ),
    )
    return parser


def parse_configs(raw: str) -> dict[str, dict[str, Any]]:
    """Parse ``--config-json``; raise ValueError naming what is wrong."""
    try:
        configs = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"--config-json is not valid JSON: {exc}.") from exc
    if not isinstance(configs, dict) or not all(isinstance(v, dict) for v in configs.values()):
        raise ValueError(
            "--config-json must be an object of function name -> object of config fields."
        )
    return configs


def format_summary(summary: dict[str, Any], wall_s: float) -> str:
    from pipeline.runner import stage_timings

    lines = [f"Request {summary['request_id']}: {summary['status']} in {wall_s:.2f} s", ""]
    lines.append(f"Transcripts ({len(summary['transcripts'])}):")
    for item in summary["transcripts"]:
        span = _span(item.get("start_s"), item.get("end_s"))
        lines.append(f"  clip {item['clip']} {span}: {item['text']}")
    lines.append("")
    lines.append(f"Detections ({len(summary['detections'])}):")
    for item in summary["detections"]:
        box = ", ".join(f"{v:.0f}" for v in item.get("box") or [])
        score = item.get("score") or 0.0
        lines.append(
            f"  clip {item['clip']} frame {item['frame']}: {item['label']} {score:.2f} [{box}]"
        )
    for note in summary.get("notes") or []:
        lines.append(f"Note: {note}")
    lines.append("")
    header = (
        f"{'stage':<16}{'count':>6}{'errors':>7}{'total ms':>11}{'mean ms':>10}"
        f"{'compute ms':>12}{'init ms':>10}{'cold':>6}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    invocations = list(summary["invocations"])
    if summary.get("orchestrator"):
        invocations.append(summary["orchestrator"])
    for row in stage_timings(invocations):
        lines.append(
            f"{row['stage']:<16}{row['count']:>6}{row['errors']:>7}{row['total_ms']:>11.1f}"
            f"{row['mean_ms']:>10.1f}{row['compute_ms']:>12.1f}{row['init_ms']:>10.1f}"
            f"{row['cold_starts']:>6}"
        )
    return "\n".join(lines)


def _span(start_s: float | None, end_s: float | None) -> str:
    if start_s is None or end_s is None:
        return ""
    return f"[{start_s:.2f}-{end_s:.2f} s]"


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_command(args: argparse.Namespace) -> int:
    from pipeline.errors import PipelineError
    from pipeline.orchestrator import validate_request_id
    from pipeline.runner import ChainRunError, LocalChain

    video: Path = args.video
    if not video.is_file():
        print(f"error: {video} is not a file; give the path of a video.", file=sys.stderr)
        return EXIT_USAGE
    try:
        configs = parse_configs(args.config_json)
        request_id = validate_request_id(args.request_id) if args.request_id else None
        workdir = args.workdir or DEFAULT_WORKDIR / time.strftime("%Y%m%d-%H%M%S")
        chain = LocalChain(workdir, configs)
    except (ValueError, PipelineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    # SIGTERM unwinds like Ctrl-C, so the with block stops every function process.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    print(f"Starting the functions (logs in {chain.workdir / 'logs'}) ...", file=sys.stderr)
    try:
        with chain:
            print(f"Ready in {chain.startup_s:.1f} s; running the chain ...", file=sys.stderr)
            start = time.perf_counter()
            summary = chain.run(video.resolve(), request_id)
            wall_s = time.perf_counter() - start
    except ChainRunError as exc:
        # The stage's message names the store's copy of the video, so name the user's file too.
        print(f"error: the chain failed on {video}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("Interrupted; the functions are stopped.", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary, wall_s))
    return EXIT_OK


def warm_command() -> int:
    from pipeline.stages import stage_class

    stage_name = JIT_CACHED_STAGE
    try:
        stage = stage_class(stage_name).from_env()
    except ValueError as exc:
        print(f"error: VS_STAGE_CONFIG is invalid for stage {stage_name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    start = time.perf_counter()
    stage.ensure_loaded()
    print(
        f"Stage {stage_name} loaded in {time.perf_counter() - start:.1f} s; numba's cache of "
        "its compiled functions is on disk.",
        file=sys.stderr,
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "run":
        return run_command(args)
    if args.command == "warm":
        return warm_command()
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
