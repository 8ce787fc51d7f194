"""Tests of key validation and the local store, including keys and URIs that try to escape."""

from __future__ import annotations

import os

import pytest

from pipeline.errors import ArtifactNotFoundError, InvalidKeyError, StorageError
from pipeline.store import (
    MAX_KEY_LENGTH,
    LocalStore,
    S3Settings,
    S3Store,
    scratch_folder,
    store_from_env,
    validate_key,
)


@pytest.mark.parametrize(
    "key",
    [
        "requests/r1/ffmpeg-0/audio.wav",
        "inputs/vidéo d'été.mp4",
        "a",
        "inputs/name with spaces/%20.mp4",
    ],
)
def test_valid_key_accepted(key):
    assert validate_key(key) == key


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty or not a string"),
        ("../outside.mp4", "has an empty, '.' or '..' part"),
        ("inputs/../../outside.mp4", "has an empty, '.' or '..' part"),
        ("inputs/..", "has an empty, '.' or '..' part"),
        ("inputs/./a.mp4", "has an empty, '.' or '..' part"),
        ("inputs//a.mp4", "has an empty, '.' or '..' part"),
        ("inputs/", "has an empty, '.' or '..' part"),
        ("/etc/passwd", "is absolute"),
        ("inputs\\..\\..\\a.mp4", "NUL byte or a backslash"),
        ("inputs/a\x00.mp4", "NUL byte or a backslash"),
        ("a" * (MAX_KEY_LENGTH + 1), f"longer than {MAX_KEY_LENGTH} bytes"),
        ("é" * (MAX_KEY_LENGTH // 2 + 1), f"longer than {MAX_KEY_LENGTH} bytes"),
    ],
)
def test_unsafe_key_rejected(key, reason):
    with pytest.raises(InvalidKeyError, match=reason):
        validate_key(key)


def test_non_string_key_rejected():
    with pytest.raises(InvalidKeyError, match="empty or not a string"):
        validate_key(None)


def test_invalid_key_is_value_error():
    with pytest.raises(ValueError):
        validate_key("../x")


def test_bytes_round_trip(local_store):
    uri = local_store.put_bytes("requests/r/librosa/segments.json", b"[]")

    assert uri.startswith("file://")
    assert local_store.get_bytes(uri) == b"[]"
    assert local_store.get_bytes("requests/r/librosa/segments.json") == b"[]"
    assert local_store.exists(uri)
    assert local_store.key_from_uri(uri) == "requests/r/librosa/segments.json"


def test_file_round_trip_unicode_key(local_store, sample_video, tmp_path):
    key = "inputs/vidéo d'été.mp4"

    uri = local_store.put_file(key, sample_video)
    copy = local_store.get_file(uri, tmp_path / "copy.mp4")

    assert "%20" in uri
    assert " " not in uri
    assert local_store.key_from_uri(uri) == key
    assert copy.read_bytes() == sample_video.read_bytes()
    assert (local_store.root / key).is_file()


def test_put_leaves_no_partial_file(local_store, sample_video):
    local_store.put_file("inputs/a.mp4", sample_video)
    local_store.put_bytes("inputs/b.txt", b"b")

    assert sorted(p.name for p in local_store.root.rglob("*") if p.is_file()) == ["a.mp4", "b.txt"]


def test_put_replaces_existing(local_store):
    local_store.put_bytes("inputs/a.txt", b"old")

    local_store.put_bytes("inputs/a.txt", b"new")

    assert local_store.get_bytes("inputs/a.txt") == b"new"


def test_list_and_delete_prefix(local_store):
    for name in ("a", "b", "c"):
        local_store.put_bytes(f"requests/r1/ffmpeg-3/{name}.jpg", b"x")
    local_store.put_bytes("requests/r2/ffmpeg-3/a.jpg", b"x")

    listed = local_store.list("requests/r1")
    removed = local_store.delete_prefix("requests/r1")

    assert listed == [f"requests/r1/ffmpeg-3/{name}.jpg" for name in ("a", "b", "c")]
    assert removed == 3
    assert local_store.list("requests") == ["requests/r2/ffmpeg-3/a.jpg"]
    assert local_store.list("requests/none") == []
    assert local_store.delete_prefix("requests/none") == 0


def test_missing_artifact_not_found(local_store, tmp_path):
    with pytest.raises(ArtifactNotFoundError, match="No artifact at 'inputs/none.mp4'"):
        local_store.get_file("inputs/none.mp4", tmp_path / "x")
    with pytest.raises(ArtifactNotFoundError, match="No artifact at 'inputs/none.mp4'"):
        local_store.get_bytes("inputs/none.mp4")
    assert not local_store.exists("inputs/none.mp4")


def test_missing_artifact_is_storage_error(local_store):
    with pytest.raises(StorageError):
        local_store.get_bytes("inputs/none.mp4")


@pytest.mark.parametrize("key", ["../escape.txt", "/tmp/escape.txt", "a\\..\\escape.txt"])
def test_put_rejects_unsafe_key(local_store, key):
    with pytest.raises(InvalidKeyError):
        local_store.put_bytes(key, b"x")

    assert not (local_store.root.parent / "escape.txt").exists()


def test_symlink_escape_rejected(local_store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside, local_store.root / "link")

    with pytest.raises(InvalidKeyError, match="resolves outside the store"):
        local_store.get_bytes("link/secret.txt")
    with pytest.raises(InvalidKeyError, match="resolves outside the store"):
        local_store.put_bytes("link/new.txt", b"x")
    assert not (outside / "new.txt").exists()


def test_symlinked_file_escape_rejected(local_store, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (local_store.root / "inputs").mkdir()
    os.symlink(secret, local_store.root / "inputs" / "video.mp4")

    with pytest.raises(InvalidKeyError, match="resolves outside the store"):
        local_store.get_bytes("inputs/video.mp4")


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("s3://bucket/inputs/a.mp4", "does not belong to the local store"),
        ("http://127.0.0.1/inputs/a.mp4", "does not belong to the local store"),
        ("file:///etc/passwd", "points outside the local store"),
    ],
)
def test_foreign_uri_rejected(local_store, uri, reason):
    with pytest.raises(InvalidKeyError, match=reason):
        local_store.get_bytes(uri)


def test_uri_of_other_local_store_rejected(local_store, tmp_path):
    other = LocalStore(tmp_path / "other")
    uri = other.put_bytes("inputs/a.txt", b"x")

    with pytest.raises(InvalidKeyError, match="points outside the local store"):
        local_store.get_bytes(uri)


def test_file_uri_with_dot_dot_rejected(local_store, tmp_path):
    (tmp_path / "secret.txt").write_text("secret")
    uri = f"file://{local_store.root}/inputs/../../secret.txt"

    with pytest.raises(InvalidKeyError):
        local_store.get_bytes(uri)


@pytest.fixture
def s3_store() -> S3Store:
    # The minio client connects only on the first request, and key_from_uri makes none.
    settings = S3Settings("127.0.0.1:9", "media", "access", "not-a-real-secret")
    return S3Store(settings)


def test_s3_key_from_uri(s3_store):
    assert s3_store.key_from_uri("s3://media/inputs/a.mp4") == "inputs/a.mp4"
    assert s3_store.key_from_uri("inputs/a.mp4") == "inputs/a.mp4"
    assert s3_store.uri("inputs/a.mp4") == "s3://media/inputs/a.mp4"


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("s3://other/inputs/a.mp4", "does not belong to bucket 'media'"),
        ("file:///tmp/inputs/a.mp4", "does not belong to bucket 'media'"),
        ("s3://media/inputs/../../a.mp4", "has an empty, '.' or '..' part"),
        ("../a.mp4", "has an empty, '.' or '..' part"),
    ],
)
def test_s3_foreign_uri_rejected(s3_store, uri, reason):
    with pytest.raises(InvalidKeyError, match=reason):
        s3_store.key_from_uri(uri)


def test_s3_settings_repr_masks_secret(s3_store):
    assert "not-a-real-secret" not in repr(s3_store.settings)
    assert "not-a-real-secret" not in repr(s3_store)


def test_store_from_env_local(tmp_path):
    store = store_from_env({"VS_STORE": "local", "VS_STORE_ROOT": str(tmp_path / "s")})

    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / "s").resolve()


def test_store_from_env_unknown_kind():
    with pytest.raises(StorageError, match="'ftp' is not a store kind"):
        store_from_env({"VS_STORE": "ftp"})


def test_store_from_env_s3_missing_settings():
    with pytest.raises(StorageError, match="needs VS_S3_ENDPOINT, VS_S3_BUCKET"):
        store_from_env({"VS_STORE": "s3"})


def test_scratch_folder_removed(scratch_dir):
    with scratch_folder("ffmpeg-0") as path:
        (path / "a.wav").write_bytes(b"x")
        assert path.parent == scratch_dir
        assert path.name.startswith("vs-ffmpeg-0-")

    assert not path.exists()
