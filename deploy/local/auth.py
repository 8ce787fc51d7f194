"""Basic auth for ``/system/*`` of the embedded runtime."""

from __future__ import annotations

import base64
import binascii
import hmac
from pathlib import Path

from deploy.auth import (
    DEFAULT_USER,
    PASSWORD_ENV,
    PASSWORD_FILE,
    Credentials,
    read_env,
    read_secret_files,
)
from deploy.errors import GatewayAuthError


def load_credentials(
    username: str | None = None,
    password: str | None = None,
    secrets_dir: Path | None = None,
) -> Credentials:
    """Resolve the runtime's credentials: explicit values, the secrets folder, the environment.

    Raises GatewayAuthError when none of them gives a password.
    """
    if password:
        return Credentials(username or DEFAULT_USER, password)
    if secrets_dir is not None:
        found = read_secret_files(secrets_dir)
        if found is not None:
            return found
    found = read_env()
    if found is not None:
        return found
    where = f"{Path(secrets_dir) / PASSWORD_FILE}, " if secrets_dir is not None else ""
    raise GatewayAuthError(
        f"Basic auth is on but no password was found in {where}the settings or ${PASSWORD_ENV}; "
        "give one or turn basic auth off."
    )


def check_basic_auth(header: str | None, expected: Credentials) -> bool:
    """Compare an ``Authorization: Basic ...`` header with the credentials in constant time.

    The scheme name is case-insensitive (RFC 7235, section 2.1).
    """
    if not header:
        return False
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "basic" or not token:
        return False
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    username, separator, password = decoded.partition(":")
    if not separator:
        return False
    user_ok = hmac.compare_digest(username.encode(), expected.username.encode())
    password_ok = hmac.compare_digest(password.encode(), expected.password.encode())
    return user_ok and password_ok
