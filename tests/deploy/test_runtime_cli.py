"""``python -m deploy.local``: exposure beyond loopback and the runtime's settings."""

from __future__ import annotations

import pytest

from deploy.local.__main__ import check_exposure, main
from deploy.local.settings import RuntimeSettings, is_loopback_host


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.10", False),
        ("example.org", False),
    ],
)
def test_is_loopback_host(host, loopback):
    assert is_loopback_host(host) is loopback


def test_non_loopback_host_without_auth_is_refused(capsys):
    code = main(["--host", "0.0.0.0", "--port", "0"])

    assert code == 2
    error = capsys.readouterr().err
    assert "--host 0.0.0.0 is beyond loopback" in error
    assert "--basic-auth" in error
    assert "--insecure-no-auth" in error


@pytest.mark.parametrize(
    ("host", "auth", "insecure"),
    [
        ("127.0.0.1", False, False),
        ("0.0.0.0", True, False),
        ("0.0.0.0", False, True),
    ],
)
def test_exposure_allowed_with_loopback_auth_or_flag(host, auth, insecure):
    assert check_exposure(host, auth_enabled=auth, insecure_no_auth=insecure) is None


def test_exposure_refused_for_all_interfaces_without_auth():
    message = check_exposure("", auth_enabled=False, insecure_no_auth=False)

    assert message is not None
    assert "all interfaces" in message


def test_replica_cap_below_one_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="max_replicas_per_function must be at least 1, got 0"):
        RuntimeSettings(run_dir=tmp_path, max_replicas_per_function=0)


def test_cli_rejects_replica_cap_below_one(capsys):
    code = main(["--port", "0", "--max-replicas-per-function", "0"])

    assert code == 2
    assert "max_replicas_per_function must be at least 1, got 0" in capsys.readouterr().err
