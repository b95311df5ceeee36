from __future__ import annotations

import ctypes
import errno
import os
import stat
import tempfile
from pathlib import Path

import pytest

from pgcm_proxy import exchange
from pgcm_proxy.writer import DEFAULT_NEW_FILE_MODE, ConfigFile


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def spares(directory: Path) -> list[Path]:
    return sorted(directory.glob(".pgbouncer.ini.*.pgcm-tmp"))


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "pgbouncer.ini"
    path.write_text("old\n")
    return path


async def assert_only_the_config_left_after_close(config: ConfigFile) -> None:
    await config.close()
    assert names(config.path.parent) == [config.path.name]


async def write(config: ConfigFile, content: str) -> bool:
    changed = await config.replace_if_changed(content)
    if changed:
        await config.sync_to_disk()
    return changed


async def test_unchanged_content_is_not_rewritten(target: Path) -> None:
    inode_before = target.stat().st_ino
    assert await write(ConfigFile(target), "old\n") is False
    assert target.stat().st_ino == inode_before


async def test_new_content_replaces_the_file_and_keeps_its_mode(target: Path) -> None:
    target.chmod(0o640)
    config = ConfigFile(target)
    assert await write(config, "new\n") is True
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    await assert_only_the_config_left_after_close(config)


async def test_a_missing_file_is_created_0640_whatever_the_umask(tmp_path: Path) -> None:
    # It may hold passwords: neither a permissive umask nor a default makes it
    # world-readable.
    path = tmp_path / "pgbouncer.ini"
    config = ConfigFile(path)
    previous = os.umask(0)
    try:
        assert await write(config, "fresh\n") is True
    finally:
        os.umask(previous)
    assert path.read_text() == "fresh\n"
    assert stat.S_IMODE(path.stat().st_mode) == DEFAULT_NEW_FILE_MODE == 0o640
    await assert_only_the_config_left_after_close(config)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
async def test_a_missing_file_is_created_with_the_mode_given(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "pgbouncer.ini"
    config = ConfigFile(path, new_file_mode=mode)
    assert await write(config, "fresh\n") is True
    assert stat.S_IMODE(path.stat().st_mode) == mode
    # The spare prepared for the next rewrite has the file's mode, not the default.
    assert [stat.S_IMODE(p.stat().st_mode) for p in spares(tmp_path)] == [mode]
    await assert_only_the_config_left_after_close(config)


async def test_an_existing_file_keeps_its_mode_over_the_mode_for_new_files(target: Path) -> None:
    target.chmod(0o604)
    config = ConfigFile(target, new_file_mode=0o600)
    assert await write(config, "new\n") is True
    assert stat.S_IMODE(target.stat().st_mode) == 0o604
    await assert_only_the_config_left_after_close(config)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
async def test_owner_is_kept_also_when_it_changes_after_the_spare_was_made(target: Path) -> None:
    os.chown(target, 1, 1)
    config = ConfigFile(target)
    await write(config, "new\n")
    assert (target.stat().st_uid, target.stat().st_gid) == (1, 1)
    os.chown(target, 2, 2)  # an operator changes it; the spare was made for 1:1
    target.chmod(0o600)
    await write(config, "newer\n")
    assert (target.stat().st_uid, target.stat().st_gid) == (2, 2)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


async def test_a_synced_rewrite_leaves_one_spare_and_the_next_one_uses_it(
    target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ConfigFile(target)
    await write(config, "new\n")
    [spare] = spares(target.parent)
    spare_status = spare.stat()
    assert spare_status.st_size == 0
    assert stat.S_IMODE(spare_status.st_mode) == stat.S_IMODE(target.stat().st_mode)

    def no_file_creation(*args: object, **kwargs: object) -> tuple[int, str]:
        raise AssertionError("the rewrite created a file instead of using the spare")

    monkeypatch.setattr(tempfile, "mkstemp", no_file_creation)
    assert await config.replace_if_changed("newer\n") is True
    assert target.read_text() == "newer\n"
    assert target.stat().st_ino == spare_status.st_ino
    monkeypatch.undo()
    await config.sync_to_disk()
    await assert_only_the_config_left_after_close(config)


async def test_the_old_file_is_swapped_out_whole_and_removed_after_the_sync(
    target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = exchange._renameat2
    assert real is not None, "glibc >= 2.28 (Debian 12) has renameat2"
    flags_used: list[int] = []

    def recording(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> int:
        flags_used.append(flags)
        return real(olddirfd, old, newdirfd, new, flags)

    monkeypatch.setattr(exchange, "_renameat2", recording)
    config = ConfigFile(target)
    with target.open() as reader_of_old:  # what a reader that opened it before still sees
        assert await config.replace_if_changed("new\n") is True
        assert reader_of_old.read() == "old\n"
        await config.sync_to_disk()
        assert os.fstat(reader_of_old.fileno()).st_nlink == 0  # unlinked, not left behind
    assert target.read_text() == "new\n"
    assert flags_used == [2]  # RENAME_EXCHANGE: no replace-on-rename flush on ext4


def failing_renameat2(code: int) -> exchange.Renameat2:
    def renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> int:
        ctypes.set_errno(code)
        return -1

    return renameat2


@pytest.mark.parametrize(
    "code",
    [errno.EINVAL, errno.ENOSYS, errno.ENOENT, None],
    ids=["filesystem-refuses", "kernel-lacks-it", "file-vanished", "c-library-lacks-it"],
)
async def test_where_the_swap_cannot_be_done_a_plain_rename_does_it(
    target: Path, monkeypatch: pytest.MonkeyPatch, code: int | None
) -> None:
    monkeypatch.setattr(exchange, "_renameat2", None if code is None else failing_renameat2(code))
    target.chmod(0o640)
    config = ConfigFile(target)
    assert await write(config, "new\n") is True
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    await assert_only_the_config_left_after_close(config)


async def test_a_refused_swap_is_an_error_and_loses_nothing(
    target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exchange, "_renameat2", failing_renameat2(errno.EACCES))
    with pytest.raises(PermissionError, match=r"pgbouncer\.ini"):
        await ConfigFile(target).replace_if_changed("new\n")
    assert target.read_text() == "old\n"
    assert names(target.parent) == ["pgbouncer.ini"]


async def test_failed_write_leaves_the_file_and_no_temporary(
    target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        await write(ConfigFile(target), "new\n")
    assert target.read_text() == "old\n"
    assert names(target.parent) == ["pgbouncer.ini"]


async def test_replace_swaps_before_any_fsync_and_sync_flushes_file_then_directory(
    target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []

    def record(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else target.read_text())

    monkeypatch.setattr(os, "fsync", record)
    config = ConfigFile(target)
    assert await config.replace_if_changed("new\n") is True
    assert (target.read_text(), synced) == ("new\n", [])
    await config.sync_to_disk()
    assert synced == ["new\n", "dir"]


async def test_a_failed_fsync_is_reported_after_the_new_file_is_in_place(
    target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def io_error(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", io_error)
    config = ConfigFile(target)
    with pytest.raises(OSError, match="Input/output error"):
        await write(config, "new\n")
    assert target.read_text() == "new\n"
    await assert_only_the_config_left_after_close(config)


async def test_a_spare_that_cannot_be_made_is_not_an_error(
    target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ConfigFile(target)
    assert await config.replace_if_changed("new\n") is True

    def disk_full(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", disk_full)
    await config.sync_to_disk()  # flushed; the spare is simply not there
    monkeypatch.undo()
    assert spares(target.parent) == []
    assert await write(config, "newer\n") is True  # creates its own file instead
    assert target.read_text() == "newer\n"


async def test_leftovers_of_a_killed_run_are_removed_and_nothing_else(target: Path) -> None:
    leftover = target.parent / ".pgbouncer.ini.abc123.pgcm-tmp"
    leftover.write_text("half")
    unrelated = target.parent / ".pgbouncer.ini.swp"
    unrelated.write_text("an editor's")
    await ConfigFile(target).remove_leftovers()
    assert names(target.parent) == [".pgbouncer.ini.swp", "pgbouncer.ini"]


async def test_overlapping_rewrites_land_in_call_order(target: Path) -> None:
    config = ConfigFile(target)
    for i in range(20):
        assert await config.replace_if_changed(f"v{i}\n") is True
    assert target.read_text() == "v19\n"
    await config.sync_to_disk()
    await assert_only_the_config_left_after_close(config)


async def test_a_file_that_grows_while_it_is_read_is_compared_whole(
    target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = "x" * 200_000 + "\n"
    target.write_text(content)
    real_fstat = os.fstat

    def stale_size(fd: int) -> os.stat_result:
        status = real_fstat(fd)
        fields = list(status)
        fields[stat.ST_SIZE] = 10  # as if the file had been 10 bytes when looked at
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", stale_size)
    assert await ConfigFile(target).replace_if_changed(content) is False
    assert await ConfigFile(target).replace_if_changed(content[:-1]) is True


async def test_leftovers_are_found_when_the_config_name_holds_glob_characters(
    tmp_path: Path,
) -> None:
    target = tmp_path / "pgbouncer[1].ini"
    target.write_text("old\n")
    (tmp_path / ".pgbouncer[1].ini.abc123.pgcm-tmp").write_text("half")
    (tmp_path / ".pgbouncer1.ini.abc123.pgcm-tmp").write_text("another config's")
    await ConfigFile(target).remove_leftovers()
    assert names(tmp_path) == [".pgbouncer1.ini.abc123.pgcm-tmp", "pgbouncer[1].ini"]
