"""The dataset of a run: check the videos before the platform is touched, then upload them.

A dataset entry is a path, a ``file://`` URI or an ``s3://`` URI. A relative path is looked
up in the current folder first, then in the project folder (where the sample video is).
Local files are uploaded to the run's store under ``inputs/<sanitised name>``. An ``s3://``
URI must already be in the store's bucket, and is posted as it is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import unquote, urlparse

from experiments.config import (
    DatasetConfig,
    LocalStorageConfig,
    MinioStorageConfig,
    StorageConfig,
)
from experiments.errors import DatasetError
from pipeline.errors import StorageError
from pipeline.store import ArtifactStore, LocalStore, S3Settings, S3Store

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
INPUTS_PREFIX = "inputs"
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class DatasetItem:
    """One video: a local file to upload, or a URI already in the store."""

    entry: str
    path: Path | None = None
    uri: str | None = None


def resolve_dataset(dataset: DatasetConfig, storage: StorageConfig) -> list[DatasetItem]:
    """Check every dataset entry and return the items; raise DatasetError naming the entry."""
    if not dataset.files:
        raise DatasetError(
            "dataset.files is empty; give at least one video path, such as "
            "dataset.files=[pipeline/samples/sample.mp4]."
        )
    return [_resolve_entry(str(entry), storage) for entry in dataset.files]


def _resolve_entry(entry: str, storage: StorageConfig) -> DatasetItem:
    parsed = urlparse(entry)
    if parsed.scheme == "s3":
        if not isinstance(storage, MinioStorageConfig) or parsed.netloc != storage.bucket:
            raise DatasetError(
                f"Dataset entry {entry!r} is an s3:// URI outside the run's store; use "
                "storage=minio with that bucket, or give a local file."
            )
        return DatasetItem(entry, uri=entry)
    if parsed.scheme == "file":
        candidate = Path(unquote(parsed.path))
    elif parsed.scheme and len(parsed.scheme) > 1:
        raise DatasetError(
            f"Dataset entry {entry!r} has the unsupported scheme {parsed.scheme!r}; give a "
            "path, a file:// URI or an s3:// URI in the store's bucket."
        )
    else:
        candidate = Path(entry).expanduser()

    path = _locate(candidate)
    if path is None:
        folders = sorted({str(Path.cwd()), str(PROJECT_ROOT)})
        where = "" if candidate.is_absolute() else f" (looked in {' and '.join(folders)})"
        raise DatasetError(
            f"Dataset file {entry!r} does not exist{where}; fix dataset.files or create the file."
        )
    if not path.is_file():
        raise DatasetError(f"Dataset entry {entry!r} is not a file: {path}.")
    try:
        size = path.stat().st_size
        with path.open("rb"):
            pass
    except OSError as exc:
        raise DatasetError(f"Dataset file {path} cannot be read: {exc}.") from exc
    if size == 0:
        raise DatasetError(f"Dataset file {path} is empty; give a video file.")
    return DatasetItem(entry, path=path)


def _locate(candidate: Path) -> Path | None:
    if candidate.is_absolute():
        return candidate if candidate.exists() else None
    for base in (Path.cwd(), PROJECT_ROOT):
        if (base / candidate).exists():
            return (base / candidate).resolve()
    return None


def open_store(storage: StorageConfig) -> ArtifactStore:
    """Open the artifact store of the run (the same one the functions are given)."""
    if isinstance(storage, MinioStorageConfig):
        if not storage.access_key or not storage.secret_key:
            raise DatasetError(
                "storage=minio needs storage.access_key and storage.secret_key; set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
            )
        return S3Store(
            S3Settings(
                endpoint=storage.endpoint,
                bucket=storage.bucket,
                access_key=storage.access_key,
                secret_key=storage.secret_key,
                secure=storage.secure,
            )
        )
    # check_config admits only the two storage schemas, so the other one is local.
    local = cast(LocalStorageConfig, storage)
    try:
        return LocalStore(Path(local.root).resolve())
    except OSError as exc:
        raise DatasetError(f"Cannot create the store folder {local.root}: {exc}.") from exc


def sanitised_name(name: str) -> str:
    """Return ``name`` reduced to letters, digits, ``.``, ``_`` and ``-``, never hidden."""
    cleaned = _UNSAFE_NAME_CHARS.sub("_", name).lstrip(".")
    return cleaned or "video"


def upload_dataset(store: ArtifactStore, items: Sequence[DatasetItem]) -> list[str]:
    """Upload the local files to ``inputs/<sanitised name>`` and return every item's URI."""
    uris: list[str] = []
    used: set[str] = set()
    for item in items:
        if item.uri is not None:
            if not _exists(store, item.uri):
                raise DatasetError(f"Dataset entry {item.entry!r} is not in the store {store!r}.")
            uris.append(item.uri)
            continue
        assert item.path is not None
        name = sanitised_name(item.path.name)
        key = f"{INPUTS_PREFIX}/{name}"
        number = 1
        while key in used:
            number += 1
            key = f"{INPUTS_PREFIX}/{number}-{name}"
        used.add(key)
        try:
            uri = store.put_file(key, item.path)
        except (StorageError, OSError) as exc:
            raise DatasetError(f"Cannot upload {item.path} to {store!r}: {exc}") from exc
        logger.info("Uploaded %s to %s", item.path, uri)
        uris.append(uri)
    return uris


def _exists(store: ArtifactStore, uri: str) -> bool:
    try:
        return store.exists(uri)
    except StorageError as exc:
        raise DatasetError(f"Cannot look up {uri} in {store!r}: {exc}") from exc
