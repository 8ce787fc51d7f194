"""Exceptions raised by the experiments package.

Every error a job raises derives from :class:`ExperimentError`. The runner converts deploy,
pipeline, Locust and MLflow failures to these at the boundary, with the cause chained, so
the command line can print one compact message and the job's MLflow run can record it.
"""

from __future__ import annotations


class ExperimentError(Exception):
    """Root of every error raised by the experiments package."""


class ConfigError(ExperimentError, ValueError):
    """The composed config is invalid; the message names the key and the fix."""


class DatasetError(ExperimentError):
    """A dataset file is missing, unreadable or cannot be uploaded to the store."""


class BackendError(ExperimentError):
    """The backend could not be started, reached or authenticated, or a deploy failed."""


class LoadError(ExperimentError):
    """The Locust load generator failed, or every request of a run failed."""


class TrackingError(ExperimentError):
    """Results could not be recorded in MLflow."""
