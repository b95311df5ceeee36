"""Lock contention with a holder in another process that dies without releasing."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import timedelta

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from pgcm_common.etcd import EtcdLock, open_etcd, read_lock_status
from pgcm_testkit.etcd import EtcdMember, random_key

pytestmark = pytest.mark.integration

TTL = timedelta(seconds=2)

# The first holder: takes the lock, says so, then holds it (keeping the lease alive)
# until it is killed.
HOLDER = """
import sys
from datetime import timedelta

import anyio
import structlog

from pgcm_common.etcd import EtcdLock, EtcdSettings, open_etcd

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


async def main() -> None:
    settings = EtcdSettings.model_validate_json(sys.argv[1])
    ttl = timedelta(seconds=float(sys.argv[3]))
    async with open_etcd(settings) as store, EtcdLock(
        store, sys.argv[2].encode(), ttl=ttl, holder="child"
    ) as lock:
        with anyio.fail_after(10):
            token = await lock.acquire()
        sys.stdout.write(f"acquired {token}\\n")
        sys.stdout.flush()
        await anyio.sleep_forever()


anyio.run(main)
"""


async def test_second_holder_waits_then_gets_the_lock_soon_after_the_first_is_killed(
    etcd: EtcdMember,
) -> None:
    key = random_key("lock")
    settings = etcd.settings()
    argv = [sys.executable, "-c", HOLDER, settings.model_dump_json(), key.decode(), "2"]
    async with await anyio.open_process(argv, stdout=subprocess.PIPE) as child:
        try:
            assert child.stdout is not None
            with anyio.fail_after(15):
                line = (
                    await BufferedByteReceiveStream(child.stdout).receive_until(b"\n", 4096)
                ).decode()
            assert line.startswith("acquired "), line
            child_token = int(line.split()[1])

            async with (
                open_etcd(settings) as store,
                EtcdLock(store, key, ttl=TTL, holder="parent") as lock,
            ):
                status = await read_lock_status(store, key)
                assert status is not None
                assert status.holder is not None
                assert (status.holder.holder, status.holder.pid) == ("child", child.pid)
                assert status.fencing_token == child_token

                # Held by a live process: we must keep waiting (longer than its TTL).
                with anyio.move_on_after(TTL.total_seconds() + 1) as waited:
                    await lock.acquire()
                assert waited.cancelled_caught
                assert lock.fencing_token is None

                child.send_signal(signal.SIGKILL)
                with anyio.fail_after(TTL.total_seconds() + 2):
                    token = await lock.acquire()
                assert lock.held
                assert token > child_token
        finally:
            if child.returncode is None:
                child.kill()
            with anyio.move_on_after(5, shield=True):
                await child.wait()
