"""Upgrade keeps an edited conffile; remove and purge leave nothing of pgcm behind."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

from tests.deb.conftest import DebianRoot, build_debs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]  # a rebuild, 3 dpkg runs

EDIT: Final = "# edited by the operator\n"
# What a test may legitimately see change in the root after purge: dpkg's own records
# and logs, and the caches apt/dpkg/man keep. Everything else must be as before.
_BOOKKEEPING: Final = (
    "/var/lib/dpkg/", "/var/log/", "/var/cache/", "/var/lib/systemd/deb-systemd-helper-",
    "/etc/group-", "/etc/gshadow-", "/etc/passwd-", "/etc/shadow-", "/etc/ld.so.cache",
)  # fmt: skip


def _snapshot(root: DebianRoot) -> dict[str, str]:
    """Return ``path -> owner, mode, size`` of every file in the root (no /proc, /dev)."""
    listing = root.out(
        "find / -xdev \\( -path /proc -o -path /dev -o -path /debs \\) -prune -o "
        "-printf '%p %U:%G %m %s\\n'"
    )
    snapshot = {}
    for line in listing.splitlines():
        path, rest = line.split(" ", 1)
        if not path.startswith(_BOOKKEEPING):
            snapshot[path] = rest
    return snapshot


def test_upgrade_keeps_the_edit_then_remove_and_purge_leave_nothing(
    debian_root: DebianRoot, tmp_path: Path
) -> None:
    root = debian_root
    before = _snapshot(root)
    groups_before = root.out("cat /etc/group /etc/passwd")
    overrides_before = root.out("dpkg-statoverride --list")
    root.run("dpkg -i /debs/*.deb")
    root.run(f"printf '{EDIT}' | tee -a /etc/pgcm/proxy.toml /etc/pgcm/failover.toml")

    # A higher-versioned rebuild of every package.
    newer = build_debs(tmp_path, "2")
    for deb in newer:
        (root.debs / deb.name).write_bytes(deb.read_bytes())
    root.run("dpkg --force-confold -i /debs/*-2_*.deb")
    versions = root.out("dpkg-query -W -f='${Package} ${Version}\\n' 'pgcm-*'").splitlines()
    assert sorted(versions) == sorted(
        f"{p} {v}" for p, v in (line.split() for line in versions) if v.endswith("-2")
    )
    assert len(versions) == 3
    assert root.out("tail -n1 /etc/pgcm/proxy.toml") == EDIT
    assert root.out("tail -n1 /etc/pgcm/failover.toml") == EDIT
    # Owners and modes of the configuration survive the upgrade (statoverrides).
    assert root.out("stat -c '%U:%G %a' /etc/pgcm/failover.toml").strip() == "root:pgcm 640"
    assert root.out("stat -c '%U:%G %a' /etc/pgcm/proxy.toml").strip() == "root:postgres 640"
    assert root.out("stat -c '%U:%G %a' /etc/pgcm/supervise.toml").strip() == "root:haclient 640"
    assert root.out("pgcm-proxy --version").endswith("\n")

    root.run("dpkg -r pgcm-supervise pgcm-proxy pgcm-failover")
    assert root.run("test -e /usr/lib/pgcm-proxy", check=False).returncode != 0
    assert root.run("test -e /usr/bin/pgcm-failover", check=False).returncode != 0
    # Conffiles stay until purge; /etc/pgbouncer gets Debian's owner and mode back.
    assert root.out("tail -n1 /etc/pgcm/proxy.toml") == EDIT
    assert root.out("stat -c '%U:%G %a' /etc/pgbouncer").strip() == "root:root 755"

    root.run("dpkg -P pgcm-supervise pgcm-proxy pgcm-failover")
    after = _snapshot(root)
    appeared = sorted(set(after) - set(before))
    vanished = sorted(set(before) - set(after))
    ours = [p for p in set(before) & set(after) if "pgcm" in p or p == "/etc/pgbouncer"]
    changed = sorted(p for p in ours if before[p] != after[p])
    assert appeared == [], appeared
    assert vanished == [], vanished
    assert changed == [], changed
    assert root.out("cat /etc/group /etc/passwd") == groups_before
    assert root.out("dpkg-statoverride --list") == overrides_before
    assert "pgcm" not in root.out("dpkg-query -W -f='${Package}\\n' || true")
