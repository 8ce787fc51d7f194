"""Gateway credentials, read as OpenFaaS mounts them (secret files) or from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

USER_FILE = "basic-auth-user"
PASSWORD_FILE = "basic-auth-password"
USER_ENV = "OPENFAAS_USERNAME"
PASSWORD_ENV = "OPENFAAS_PASSWORD"
DEFAULT_USER = "admin"


@dataclass(frozen=True)
class Credentials:
    """A basic auth user and password; the repr masks the password."""

    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***')"


def read_secret_files(secrets_dir: Path | str) -> Credentials | None:
    """Read ``basic-auth-user``/``basic-auth-password`` from a folder; None without a password.

    A folder with a password file but no user file means the user ``admin``, as in OpenFaaS.
    """
    folder = Path(secrets_dir)
    password_path = folder / PASSWORD_FILE
    if not password_path.is_file():
        return None
    user_path = folder / USER_FILE
    username = user_path.read_text().strip() if user_path.is_file() else DEFAULT_USER
    return Credentials(username or DEFAULT_USER, password_path.read_text().strip())


def read_env() -> Credentials | None:
    """Read ``$OPENFAAS_USERNAME`` (default ``admin``) and ``$OPENFAAS_PASSWORD``."""
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        return None
    return Credentials(os.environ.get(USER_ENV) or DEFAULT_USER, password)
