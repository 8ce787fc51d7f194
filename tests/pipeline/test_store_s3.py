"""S3Store against moto's S3 server on 127.0.0.1, and the whole chain with ``VS_STORE=s3``.

moto accepts any credentials unless ``INITIAL_NO_AUTH_ACTION_COUNT`` is set, so the
wrong-credentials test starts a second moto server process with it set to 0, which makes
moto reject keys it has not issued.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from minio import Minio

from pipeline.errors import ArtifactNotFoundError, InvalidKeyError, StorageError
from pipeline.runner import LocalChain
from pipeline.store import S3Settings, S3Store, store_from_env

SECRET = "s3cr3t-Value-not-for-logs"
ACCESS_KEY = "vs-test-access"


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket() -> str:
    return f"vs-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(moto_endpoint, bucket) -> S3Store:
    return S3Store(S3Settings(moto_endpoint, bucket, ACCESS_KEY, SECRET))


def bucket_names(endpoint: str) -> list[str]:
    client = Minio(endpoint.removeprefix("http://"), ACCESS_KEY, SECRET, secure=False)
    return [b.name for b in client.list_buckets()]


def test_missing_bucket_is_created(store, moto_endpoint, bucket):
    assert bucket not in bucket_names(moto_endpoint)

    uri = store.put_bytes("requests/r1/note.txt", b"hello")

    assert uri == f"s3://{bucket}/requests/r1/note.txt"
    assert bucket in bucket_names(moto_endpoint)


def test_put_and_get_bytes(store):
    store.put_bytes("requests/r1/a.json", b'{"a": 1}')

    assert store.get_bytes("requests/r1/a.json") == b'{"a": 1}'
    assert store.exists("requests/r1/a.json")
    assert not store.exists("requests/r1/b.json")


def test_put_and_get_file(store, tmp_path, sample_video):
    uri = store.put_file("inputs/vidéo d'été.mp4", sample_video)

    copy = store.get_file(uri, tmp_path / "copy.mp4")

    assert copy.read_bytes() == sample_video.read_bytes()
    assert store.key_from_uri(uri) == "inputs/vidéo d'été.mp4"


def test_list_and_delete_prefix(store):
    for name in ("a.txt", "b.txt", "sub/c.txt"):
        store.put_bytes(f"requests/r2/{name}", b"x")
    store.put_bytes("requests/r3/keep.txt", b"x")

    listed = store.list("requests/r2")
    deleted = store.delete_prefix("requests/r2")

    assert listed == ["requests/r2/a.txt", "requests/r2/b.txt", "requests/r2/sub/c.txt"]
    assert deleted == 3
    assert store.list("requests/r2") == []
    assert store.list("requests") == ["requests/r3/keep.txt"]


def test_missing_key_is_not_found(store):
    store.put_bytes("requests/r4/here.txt", b"x")

    with pytest.raises(ArtifactNotFoundError, match=r"No artifact at 'requests/r4/gone.txt'"):
        store.get_bytes("requests/r4/gone.txt")


@pytest.mark.parametrize("key", ["requests/../etc/passwd", "../x", "/abs/key", "a//b"])
def test_unsafe_key_is_rejected(store, key):
    with pytest.raises(InvalidKeyError, match="relative|'..'|absolute|empty"):
        store.put_bytes(key, b"x")


def test_uri_of_other_bucket_is_rejected(store):
    with pytest.raises(InvalidKeyError, match="does not belong to bucket"):
        store.get_bytes("s3://another-bucket/requests/r1/a.json")


def test_repr_masks_secret(store):
    assert SECRET not in repr(store)
    assert SECRET not in repr(store.settings)
    assert "secret_key='***'" in repr(store.settings)


@pytest.fixture(scope="module")
def strict_moto_endpoint(tmp_path_factory):
    """A moto server process that rejects credentials it did not issue."""
    log_path = tmp_path_factory.mktemp("strict-moto") / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        match = None
        while match is None and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
            match = re.search(r"Running on http://127\.0\.0\.1:(\d+)", log_path.read_text())
        assert match is not None, f"moto did not report its port: {log_path.read_text()[-500:]}"
        yield f"http://127.0.0.1:{match.group(1)}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_wrong_credentials_hide_secret(strict_moto_endpoint, bucket):
    store = S3Store(S3Settings(strict_moto_endpoint, bucket, ACCESS_KEY, SECRET))

    with pytest.raises(StorageError, match="InvalidAccessKeyId") as caught:
        store.put_bytes("requests/r1/a.txt", b"x")

    assert SECRET not in str(caught.value)
    assert "Check the endpoint, the credentials" in str(caught.value)


def test_unreachable_endpoint_is_storage_error(bucket):
    store = S3Store(S3Settings("http://127.0.0.1:9", bucket, ACCESS_KEY, SECRET))

    with pytest.raises(
        StorageError, match=r"Cannot reach bucket .* on http://127\.0\.0\.1:9"
    ) as caught:
        store.put_bytes("requests/r1/a.txt", b"x")

    assert SECRET not in str(caught.value)


def test_secret_key_file_is_read(moto_endpoint, bucket, tmp_path):
    secret_file = tmp_path / "s3-secret-key"
    secret_file.write_text(SECRET + "\n")
    env = {
        "VS_STORE": "s3",
        "VS_S3_ENDPOINT": moto_endpoint,
        "VS_S3_BUCKET": bucket,
        "VS_S3_ACCESS_KEY": ACCESS_KEY,
        "VS_S3_SECRET_KEY_FILE": str(secret_file),
    }

    store = store_from_env(env)

    assert isinstance(store, S3Store)
    assert store.settings.secret_key == SECRET


def test_missing_secret_key_file_is_storage_error(tmp_path):
    env = {"VS_STORE": "s3", "VS_S3_SECRET_KEY_FILE": str(tmp_path / "absent")}

    with pytest.raises(StorageError, match="Cannot read the S3 key from VS_S3_SECRET_KEY_FILE"):
        store_from_env(env)


def test_access_key_read_from_file(tmp_path):
    key_file = tmp_path / "s3-access-key"
    key_file.write_text("from-file\n")
    env = {
        "VS_STORE": "s3",
        "VS_S3_ENDPOINT": "127.0.0.1:9",
        "VS_S3_BUCKET": "b",
        "VS_S3_ACCESS_KEY_FILE": str(key_file),
        "VS_S3_SECRET_KEY": "s",
    }

    store = store_from_env(env)

    assert store.settings.access_key == "from-file"


def test_s3_list_matches_folders_only(moto_endpoint, bucket):
    store = S3Store(S3Settings(moto_endpoint, bucket, ACCESS_KEY, SECRET))
    store.put_bytes("requests/r2/a.txt", b"a")
    store.put_bytes("requests/r20/b.txt", b"b")

    listed = store.list("requests/r2")
    deleted = store.delete_prefix("requests/r2")

    assert listed == ["requests/r2/a.txt"]
    assert deleted == 1
    assert store.exists("requests/r20/b.txt")


def test_missing_s3_settings_are_named():
    with pytest.raises(StorageError, match="VS_S3_ENDPOINT, VS_S3_BUCKET"):
        store_from_env({"VS_STORE": "s3", "VS_S3_ACCESS_KEY": "a", "VS_S3_SECRET_KEY": "b"})


def test_chain_runs_on_s3_store(moto_endpoint, bucket, tmp_path, sample_video):
    secret_file = tmp_path / "s3-secret-key"
    secret_file.write_text(SECRET)
    env = {
        "VS_STORE": "s3",
        "VS_S3_ENDPOINT": moto_endpoint,
        "VS_S3_BUCKET": bucket,
        "VS_S3_ACCESS_KEY": ACCESS_KEY,
        "VS_S3_SECRET_KEY_FILE": str(secret_file),
    }

    with LocalChain(tmp_path / "work", env=env) as chain:
        summary = chain.run(sample_video, "s3-chain")

    store = S3Store(S3Settings(moto_endpoint, bucket, ACCESS_KEY, SECRET))
    state = json.loads(store.get_bytes("requests/s3-chain/state.json"))
    text = " ".join(t["text"] for t in summary["transcripts"]).lower()
    assert summary["status"] == "ok"
    assert summary["video"].startswith(f"s3://{bucket}/inputs/s3-chain/")
    assert "fox" in text
    assert state["status"] == "ok"
    assert store.exists("requests/s3-chain/ffmpeg-0/audio.wav")
    assert not (tmp_path / "work" / "store").exists()
    for log in Path(tmp_path / "work" / "logs").iterdir():
        assert SECRET not in log.read_text(errors="replace"), log.name
