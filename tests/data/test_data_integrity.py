"""check_files: the pre-training check of a dataset's files against its manifest (sizes, and sha256 when small)."""

from __future__ import annotations

from dinowm_core.data.integrity import check_files
from dinowm_core.data.store import read_manifest


def _fix(path) -> str:
    return f"; run `dinowm data verify {path}` to list every damaged file, then regenerate or re-copy the dataset"


def test_intact_dataset_has_no_problem(make_store):
    path, _ = make_store([12, 12, 12])
    assert check_files(path, read_manifest(path)) == []


def test_same_size_corruption_is_found_by_hashing_below_the_limit(make_store):
    path, _ = make_store([12, 12, 12])
    manifest = read_manifest(path)
    shard = path / "shard-00000.arrow"
    data = bytearray(shard.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])  # same size, middle of the file
    shard.write_bytes(bytes(data))
    assert check_files(path, manifest) == [
        f"{shard}: sha256 differs from the manifest (corrupted)" + _fix(path)
    ]
    assert check_files(path, manifest, hash_limit_bytes=0) == []  # above the limit: sizes only


def test_truncated_or_missing_file_is_found_without_hashing(make_store):
    path, _ = make_store([12, 12, 12, 12], per_shard=2)
    manifest = read_manifest(path)
    shard = path / "shard-00001.arrow"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size - 100])
    (path / "episodes.arrow").unlink()
    assert check_files(path, manifest, hash_limit_bytes=0) == [
        f"{path / 'episodes.arrow'}: missing" + _fix(path),
        f"{shard}: {size - 100} bytes, manifest says {size} (truncated or modified)" + _fix(path),
    ]
