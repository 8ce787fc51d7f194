"""Nox sessions: tests, lint, typecheck, smoke, study and images.

Each session installs the project into its own virtualenv under ``.nox/`` (reused between
runs). ``study`` runs the standard sweep and takes long; see the README for its duration.
"""

from __future__ import annotations

import shutil

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
SOURCES = ["pipeline", "deploy", "experiments", "tests", "benchmarks", "noxfile.py"]
FUNCTIONS = [
    "ffmpeg-0",
    "librosa",
    "ffmpeg-1",
    "ffmpeg-2",
    "asr",
    "ffmpeg-3",
    "object-detector",
    "orchestrator",
]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite against real components; extra arguments go to pytest."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check formatting and lint rules with ruff at the project's one line width."""
    session.install("ruff>=0.6")
    session.run("ruff", "format", "--check", *SOURCES)
    session.run("ruff", "check", *SOURCES)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type-check the packages with mypy (third-party stubs missing are ignored)."""
    session.install("-e", ".", "mypy>=1.10")
    session.run("mypy", "--ignore-missing-imports", "pipeline", "deploy", "experiments")


@nox.session(python=PYTHON)
def smoke(session: nox.Session) -> None:
    """Run the chain once on the sample video, then the quick-start experiment."""
    session.install("-e", ".")
    session.run("python", "-m", "pipeline", "run", "pipeline/samples/sample.mp4")
    session.run("python", "-m", "experiments", "run")


@nox.session(python=PYTHON)
def study(session: nox.Session) -> None:
    """Run the standard sweep (three regimes, two workloads, three repetitions) and its report."""
    session.install("-e", ".")
    session.run(
        "python",
        "-m",
        "experiments",
        "run",
        "-m",
        "regime=cold,warm,burst_ready",
        "workload=steady,burst",
        "repeat=3",
        *session.posargs,
    )


@nox.session(python=False)
def images(session: nox.Session) -> None:
    """Build the base image and one image per function; needs a Docker engine.

    The first positional argument is the image prefix (``pipeline.image_prefix``, default
    ``videosearcher``); tags are ``{prefix}-{function}:latest`` as the stack.yml expects.
    """
    if shutil.which("docker") is None:
        session.error(
            "docker is not installed; build the images on a machine with a Docker engine."
        )
    prefix = session.posargs[0] if session.posargs else "videosearcher"
    base = f"{prefix}-base:latest"
    session.run("docker", "build", "-f", "docker/Dockerfile.base", "-t", base, ".", external=True)
    for function in FUNCTIONS:
        session.run(
            "docker",
            "build",
            "-f",
            "docker/Dockerfile",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--build-arg",
            f"FUNCTION={function}",
            "-t",
            f"{prefix}-{function}:latest",
            ".",
            external=True,
        )
