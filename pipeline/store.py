"""Artifact stores: a local folder or a MinIO/S3 bucket, addressed by validated keys.

Functions exchange artifact URIs, never media bytes (the claim-check pattern). A key is a
relative POSIX path such as ``requests/<request_id>/ffmpeg-0/audio.wav``; a URI is
``file:///<root>/<key>`` for the local store and ``s3://<bucket>/<key>`` for S3.

Which store a function process uses comes from the environment (see :func:`store_from_env`),
so the platform that runs the function decides and the function code stays the same.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import quote, unquote, urlparse

from pipeline.errors import ArtifactNotFoundError, InvalidKeyError, StorageError

logger = logging.getLogger(__name__)

MAX_KEY_LENGTH = 1024
"""S3 limits object keys to 1024 bytes; the local store applies the same limit."""


def validate_key(key: str) -> str:
    """Return ``key`` normalised, or raise :class:`InvalidKeyError` if it is unsafe.

    A key must be a non-empty relative POSIX path without ``..`` or ``.`` parts, backslashes
    or NUL bytes, and at most :data:`MAX_KEY_LENGTH` bytes in UTF-8.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(
            f"Artifact key {key!r} is empty or not a string; give a relative path."
        )
    if "\x00" in key or "\\" in key:
        raise InvalidKeyError(
            f"Artifact key {key!r} contains a NUL byte or a backslash; use '/' between parts."
        )
    if len(key.encode("utf-8")) > MAX_KEY_LENGTH:
        raise InvalidKeyError(
            f"Artifact key is longer than {MAX_KEY_LENGTH} bytes: {key[:80]!r}..."
        )
    path = PurePosixPath(key)
    if path.is_absolute() or key.startswith("/"):
        raise InvalidKeyError(
            f"Artifact key {key!r} is absolute; give a path relative to the store."
        )
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidKeyError(
            f"Artifact key {key!r} has an empty, '.' or '..' part; keys must stay inside the store."
        )
    return key


class ArtifactStore(Protocol):
    """The operations a stage needs from a store. Keys are validated by every method."""

    def uri(self, key: str) -> str: ...

    def key_from_uri(self, uri_or_key: str) -> str: ...

    def put_file(self, key: str, path: Path) -> str: ...

    def put_bytes(self, key: str, data: bytes) -> str: ...

    def get_file(self, uri_or_key: str, dest: Path) -> Path: ...

    def get_bytes(self, uri_or_key: str) -> bytes: ...

    def exists(self, uri_or_key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def delete_prefix(self, prefix: str) -> int: ...


class LocalStore:
    """A store in a local folder; keys map to files under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r})"

    def uri(self, key: str) -> str:
        return "file://" + quote(str(self._path(key)))

    def key_from_uri(self, uri_or_key: str) -> str:
        if not uri_or_key.startswith("file://"):
            if "://" in uri_or_key:
                raise InvalidKeyError(
                    f"URI {uri_or_key!r} does not belong to the local store at {self.root}."
                )
            return validate_key(uri_or_key)
        path = Path(unquote(urlparse(uri_or_key).path))
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            raise InvalidKeyError(
                f"URI {uri_or_key!r} points outside the local store at {self.root}."
            ) from None
        return validate_key(relative.as_posix())

    def _path(self, key: str) -> Path:
        path = self.root / validate_key(key)
        # A symlink inside the store could still lead outside it.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidKeyError(
                f"Artifact key {key!r} resolves outside the store at {self.root}."
            )
        return path

    def put_file(self, key: str, path: Path) -> str:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(path, partial)
        os.replace(partial, target)
        return self.uri(key)

    def put_bytes(self, key: str, data: bytes) -> str:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, target)
        return self.uri(key)

    def _existing(self, uri_or_key: str) -> Path:
        path = self._path(self.key_from_uri(uri_or_key))
        if not path.is_file():
            raise ArtifactNotFoundError(f"No artifact at {uri_or_key!r} in {self!r}.")
        return path

    def get_file(self, uri_or_key: str, dest: Path) -> Path:
        shutil.copyfile(self._existing(uri_or_key), dest)
        return dest

    def get_bytes(self, uri_or_key: str) -> bytes:
        return self._existing(uri_or_key).read_bytes()

    def exists(self, uri_or_key: str) -> bool:
        return self._path(self.key_from_uri(uri_or_key)).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / validate_key(prefix) if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.endswith(".partial")
        )

    def delete_prefix(self, prefix: str) -> int:
        base = self._path(prefix)
        if not base.exists():
            return 0
        if base.is_file():
            base.unlink()
            return 1
        count = sum(1 for p in base.rglob("*") if p.is_file())
        shutil.rmtree(base)
        return count


@dataclass(frozen=True)
class S3Settings:
    """Connection settings of an S3-protocol server. The repr masks the secret key."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)
    secure: bool = False
    region: str | None = None

    def __repr__(self) -> str:
        return (
            f"S3Settings(endpoint={self.endpoint!r}, bucket={self.bucket!r}, "
            f"access_key={self.access_key!r}, secret_key='***', secure={self.secure})"
        )


class S3Store:
    """A store in one bucket of a MinIO or S3 server, through the ``minio`` SDK.

    The bucket is created on first use if it is missing. Failures of the SDK are raised as
    :class:`StorageError` with the endpoint, bucket and key, never the credentials.
    """

    def __init__(self, settings: S3Settings):
        from minio import Minio

        self.settings = settings
        endpoint = settings.endpoint
        secure = settings.secure
        if "://" in endpoint:
            parsed = urlparse(endpoint)
            secure = parsed.scheme == "https"
            endpoint = parsed.netloc
        self._client = Minio(
            endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=secure,
            region=settings.region,
        )
        self._bucket_checked = False

    def __repr__(self) -> str:
        return f"S3Store(endpoint={self.settings.endpoint!r}, bucket={self.settings.bucket!r})"

    def _ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        from minio.error import MinioException
        from urllib3.exceptions import HTTPError

        bucket = self.settings.bucket
        try:
            if not self._client.bucket_exists(bucket):
                logger.info("Creating bucket %s on %s", bucket, self.settings.endpoint)
                self._client.make_bucket(bucket)
        # urllib3 raises MaxRetryError (an HTTPError, not an OSError) when nothing listens.
        except (MinioException, OSError, HTTPError) as exc:
            raise StorageError(
                f"Cannot reach bucket {bucket!r} on {self.settings.endpoint}: {exc}. "
                "Check the endpoint, the credentials and that the server is running."
            ) from exc
        self._bucket_checked = True

    def uri(self, key: str) -> str:
        return f"s3://{self.settings.bucket}/{validate_key(key)}"

    def key_from_uri(self, uri_or_key: str) -> str:
        if "://" not in uri_or_key:
            return validate_key(uri_or_key)
        parsed = urlparse(uri_or_key)
        if parsed.scheme != "s3" or parsed.netloc != self.settings.bucket:
            raise InvalidKeyError(
                f"URI {uri_or_key!r} does not belong to bucket {self.settings.bucket!r}."
            )
        return validate_key(parsed.path.lstrip("/"))

    def _call(self, what: str, key: str, fn, *args, **kwargs):
        from minio.error import MinioException, S3Error
        from urllib3.exceptions import HTTPError

        self._ensure_bucket()
        try:
            return fn(*args, **kwargs)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ArtifactNotFoundError(f"No artifact at {key!r} in {self!r}.") from exc
            raise StorageError(
                f"Cannot {what} {key!r} in {self!r}: {exc.code} {exc.message}"
            ) from exc
        except (MinioException, OSError, HTTPError) as exc:
            raise StorageError(f"Cannot {what} {key!r} in {self!r}: {exc}") from exc

    def put_file(self, key: str, path: Path) -> str:
        key = validate_key(key)
        self._call("upload", key, self._client.fput_object, self.settings.bucket, key, str(path))
        return self.uri(key)

    def put_bytes(self, key: str, data: bytes) -> str:
        import io

        key = validate_key(key)
        self._call(
            "upload",
            key,
            self._client.put_object,
            self.settings.bucket,
            key,
            io.BytesIO(data),
            len(data),
        )
        return self.uri(key)

    def get_file(self, uri_or_key: str, dest: Path) -> Path:
        key = self.key_from_uri(uri_or_key)
        self._call("download", key, self._client.fget_object, self.settings.bucket, key, str(dest))
        return dest

    def get_bytes(self, uri_or_key: str) -> bytes:
        key = self.key_from_uri(uri_or_key)
        response = self._call("download", key, self._client.get_object, self.settings.bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def exists(self, uri_or_key: str) -> bool:
        key = self.key_from_uri(uri_or_key)
        try:
            self._call("look up", key, self._client.stat_object, self.settings.bucket, key)
        except ArtifactNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        """List the keys under the folder ``prefix`` (``requests/r2`` does not match ``r20``)."""
        folder = ""
        if prefix:
            folder = validate_key(prefix) + "/"
        objects = self._call(
            "list",
            prefix,
            self._client.list_objects,
            self.settings.bucket,
            prefix=folder,
            recursive=True,
        )
        return sorted(obj.object_name for obj in objects)

    def delete_prefix(self, prefix: str) -> int:
        """Delete the object ``prefix`` and every key under the folder ``prefix``."""
        keys = self.list(validate_key(prefix))
        if self.exists(prefix):
            keys.append(prefix)
        for key in keys:
            self._call("delete", key, self._client.remove_object, self.settings.bucket, key)
        return len(keys)


ENV_STORE_KIND = "VS_STORE"
ENV_STORE_ROOT = "VS_STORE_ROOT"
ENV_S3_ENDPOINT = "VS_S3_ENDPOINT"
ENV_S3_BUCKET = "VS_S3_BUCKET"
ENV_S3_ACCESS_KEY = "VS_S3_ACCESS_KEY"
ENV_S3_SECRET_KEY = "VS_S3_SECRET_KEY"
ENV_S3_SECRET_KEY_FILE = "VS_S3_SECRET_KEY_FILE"
ENV_S3_ACCESS_KEY_FILE = "VS_S3_ACCESS_KEY_FILE"
ENV_S3_SECURE = "VS_S3_SECURE"
DEFAULT_STORE_ROOT = "runs/store"


def store_from_env(environ: Mapping[str, str] | None = None) -> ArtifactStore:
    """Build the store a function process uses from its environment.

    ``VS_STORE`` is ``local`` (default; folder ``VS_STORE_ROOT``, default ``runs/store``) or
    ``s3`` (``VS_S3_ENDPOINT``, ``VS_S3_BUCKET``, ``VS_S3_ACCESS_KEY``, ``VS_S3_SECRET_KEY``,
    ``VS_S3_SECURE``; the keys fall back to ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``).
    ``VS_S3_ACCESS_KEY_FILE`` and ``VS_S3_SECRET_KEY_FILE`` name files holding the keys, as
    OpenFaaS mounts secrets; each is read only when its plain variable is unset.
    """
    env = os.environ if environ is None else environ
    for plain, file_variable in (
        (ENV_S3_ACCESS_KEY, ENV_S3_ACCESS_KEY_FILE),
        (ENV_S3_SECRET_KEY, ENV_S3_SECRET_KEY_FILE),
    ):
        if env.get(file_variable) and not env.get(plain):
            env = {**env, plain: _read_secret_file(file_variable, env[file_variable])}
    kind = env.get(ENV_STORE_KIND, "local").strip().lower()
    if kind == "local":
        return LocalStore(env.get(ENV_STORE_ROOT, DEFAULT_STORE_ROOT))
    if kind in ("s3", "minio"):
        missing = [
            name
            for name, value in (
                (ENV_S3_ENDPOINT, env.get(ENV_S3_ENDPOINT)),
                (ENV_S3_BUCKET, env.get(ENV_S3_BUCKET)),
                (ENV_S3_ACCESS_KEY, env.get(ENV_S3_ACCESS_KEY, env.get("AWS_ACCESS_KEY_ID"))),
                (ENV_S3_SECRET_KEY, env.get(ENV_S3_SECRET_KEY, env.get("AWS_SECRET_ACCESS_KEY"))),
            )
            if not value
        ]
        if missing:
            raise StorageError(
                f"The S3 store needs {', '.join(missing)} in the environment; set them or use "
                f"{ENV_STORE_KIND}=local."
            )
        return S3Store(
            S3Settings(
                endpoint=env[ENV_S3_ENDPOINT],
                bucket=env[ENV_S3_BUCKET],
                access_key=env.get(ENV_S3_ACCESS_KEY) or env["AWS_ACCESS_KEY_ID"],
                secret_key=env.get(ENV_S3_SECRET_KEY) or env["AWS_SECRET_ACCESS_KEY"],
                secure=env.get(ENV_S3_SECURE, "false").lower() in ("1", "true", "yes"),
            )
        )
    raise StorageError(f"{ENV_STORE_KIND}={kind!r} is not a store kind; use 'local' or 's3'.")


def _read_secret_file(variable: str, path: str) -> str:
    """Return the stripped content of a secret file; the message never shows the content."""
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise StorageError(
            f"Cannot read the S3 key from {variable}={path!r}: "
            f"{exc.strerror}. Check that the secret is mounted there."
        ) from exc
    if not secret:
        raise StorageError(
            f"The S3 key file {path!r} ({variable}) is empty; write the key into it."
        )
    return secret


@contextmanager
def scratch_folder(stage: str) -> Iterator[Path]:
    """Yield a fresh private folder for one invocation and remove it afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"vs-{stage}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
