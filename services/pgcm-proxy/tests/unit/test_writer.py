from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pgcm_proxy.writer import replace_if_changed, sync_to_disk, write_if_changed


async def test_unchanged_content_is_not_rewritten(tmp_path: Path) -> None:
    target = tmp_path / "pgbouncer.ini"
    target.write_text("same\n")
    inode_before = target.stat().st_ino
    assert await write_if_changed(target, "same\n") is False
    assert target.stat().st_ino == inode_before


async def test_new_content_replaces_the_file_and_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "pgbouncer.ini"
    target.write_text("old\n")
    target.chmod(0o640)
    assert await write_if_changed(target, "new\n") is True
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["pgbouncer.ini"]


async def test_a_missing_file_is_created(tmp_path: Path) -> None:
    target = tmp_path / "pgbouncer.ini"
    assert await write_if_changed(target, "fresh\n") is True
    assert target.read_text() == "fresh\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
async def test_owner_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "pgbouncer.ini"
    target.write_text("old\n")
    os.chown(target, 1, 1)
    await write_if_changed(target, "new\n")
    assert (target.stat().st_uid, target.stat().st_gid) == (1, 1)


async def test_failed_write_leaves_the_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "pgbouncer.ini"
    target.write_text("old\n")

    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        await write_if_changed(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pgbouncer.ini"]


async def test_replace_renames_before_any_fsync_and_sync_flushes_file_then_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "pgbouncer.ini"
    target.write_text("old\n")
    synced: list[str] = []

    def record(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else Path(target).read_text())

    monkeypatch.setattr(os, "fsync", record)
    assert await replace_if_changed(target, "new\n") is True
    assert (target.read_text(), synced) == ("new\n", [])
    await sync_to_disk(target)
    assert synced == ["new\n", "dir"]


async def test_a_failed_fsync_is_reported_after_the_new_file_is_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "pgbouncer.ini"
    target.write_text("old\n")

    def io_error(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", io_error)
    with pytest.raises(OSError, match="Input/output error"):
        await write_if_changed(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pgbouncer.ini"]
