"""Tests of the dataset check that runs before anything is deployed."""

from __future__ import annotations

import pytest

from experiments.config import DatasetConfig, LocalStorageConfig
from experiments.dataset import resolve_dataset
from experiments.errors import DatasetError


def test_missing_absolute_path_names_no_search_folders(tmp_path):
    missing = tmp_path / "absent.mp4"

    with pytest.raises(DatasetError) as raised:
        resolve_dataset(DatasetConfig(files=[str(missing)]), LocalStorageConfig(root=str(tmp_path)))

    assert f"{str(missing)!r} does not exist;" in str(raised.value)
    assert "looked in" not in str(raised.value)


def test_missing_relative_path_names_each_folder_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    with pytest.raises(DatasetError, match="looked in") as raised:
        resolve_dataset(DatasetConfig(files=["absent.mp4"]), LocalStorageConfig(root=str(tmp_path)))

    assert str(raised.value).count(str(tmp_path)) == 1


def test_directory_is_not_a_dataset_file(tmp_path):
    with pytest.raises(DatasetError, match="is not a file"):
        resolve_dataset(
            DatasetConfig(files=[str(tmp_path)]), LocalStorageConfig(root=str(tmp_path))
        )
