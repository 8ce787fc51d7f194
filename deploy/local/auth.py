"""Basic auth for ``/system/*``, with credentials from OpenFaaS secret files or the environment."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from deploy.errors import GatewayAuthError

logger = logging.getLogger(__name__)

USER_FILE = "basic-auth-user"
PASSWORD_FILE = "basic-auth-password"
USER_ENV = "OPENFAAS_USERNAME"
PASSWORD_ENV = "OPENFAAS_PASSWORD"
DEFAULT_USER = "admin"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***')"


def read_secret_files(secrets_dir: Path) -> Credentials | None:
    """Read ``basic-auth-user``/``basic-auth-password`` from a folder; None if absent.

    A folder with a password file but no user file means the user ``admin``, as in OpenFaaS.
    """
    password_path = Path(secrets_dir) / PASSWORD_FILE
    if not password_path.is_file():
        return None
    user_path = Path(secrets_dir) / USER_FILE
    username = user_path.read_text().strip() if user_path.is_file() else DEFAULT_USER
    return Credentials(username, password_path.read_text().strip())


def load_credentials(
    username: str | None = None,
    password: str | None = None,
    secrets_dir: Path | None = None,
) -> Credentials:
    """Resolve credentials: explicit values, then the secrets folder, then the environment.

    Raises GatewayAuthError when none of them gives a password.
    """
    if password:
        return Credentials(username or DEFAULT_USER, password)
    if secrets_dir is not None:
        found = read_secret_files(secrets_dir)
        if found is not None:
            return found
    env_password = os.environ.get(PASSWORD_ENV)
    if env_password:
        return Credentials(os.environ.get(USER_ENV) or DEFAULT_USER, env_password)
    where = f"{secrets_dir}/{PASSWORD_FILE}, " if secrets_dir is not None else ""
    raise GatewayAuthError(
        f"Basic auth is on but no password was found in {where}the setting or ${PASSWORD_ENV}; "
        "give one or turn basic auth off."
    )


def check_basic_auth(header: str | None, expected: Credentials) -> bool:
    """Compare an ``Authorization: Basic ...`` header with the credentials in constant time."""
    if not header or not header.startswith("Basic "):
        return False
    try:
        decoded = base64.b64decode(header[len("Basic ") :], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    username, separator, password = decoded.partition(":")
    if not separator:
        return False
    user_ok = hmac.compare_digest(username.encode(), expected.username.encode())
    password_ok = hmac.compare_digest(password.encode(), expected.password.encode())
    return user_ok and password_ok
