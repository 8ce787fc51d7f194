"""Exceptions raised by the pipeline package.

Every error a stage or the store raises derives from :class:`PipelineError`. Third-party
failures (ffmpeg exit codes, PyAV, onnxruntime, minio, httpx) are converted at the boundary
with the original exception chained as ``__cause__``.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Root of every error raised by the pipeline package."""


class StorageError(PipelineError):
    """An artifact could not be stored, found or read."""


class InvalidKeyError(StorageError, ValueError):
    """An artifact key or URI is unsafe (absolute, contains ``..``) or belongs to another store."""


class ArtifactNotFoundError(StorageError):
    """No artifact exists under the requested key."""


class BadRequestError(PipelineError):
    """A function request body is malformed or misses a required field."""


class StageError(PipelineError):
    """A stage failed on one input.

    Attributes:
        stage: the stage name, such as ``ffmpeg-0``.
        input: the artifact URI or value the stage was working on.
        bad_input: True when the input itself is at fault (not media, truncated, ...),
            False for an internal or engine failure.
    """

    def __init__(self, stage: str, input: str, message: str, *, bad_input: bool = False):
        self.stage = stage
        self.input = input
        self.bad_input = bad_input
        super().__init__(f"{stage}: {message} (input: {input})")
        self.reason = message


class MediaError(StageError):
    """ffmpeg or PyAV could not read or write a media file."""

    def __init__(self, stage: str, input: str, message: str, *, bad_input: bool = True):
        super().__init__(stage, input, message, bad_input=bad_input)


class EngineUnavailableError(StageError):
    """A configured engine or model file cannot be used on this machine."""


class InvocationError(PipelineError):
    """A call from the orchestrator to another function failed.

    Attributes:
        stage: the function that was called.
        input: the artifact URI or value sent to it.
        status_code: the HTTP status, or None when no response arrived.
    """

    def __init__(self, stage: str, input: str, message: str, status_code: int | None = None):
        self.stage = stage
        self.input = input
        self.status_code = status_code
        super().__init__(f"{stage}: {message} (input: {input})")
        self.reason = message
