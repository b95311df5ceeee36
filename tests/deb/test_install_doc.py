"""docs/install.md's commands are the ones that work: run them in a clean Debian 12 root.

Every fenced block whose info string is ``sh install:<role> ...`` is run, in document
order, as one script per role (so variables set in one block reach the next), in a
fresh root holding only the .debs and stand-in TLS files. Blocks without a tag need the
running cluster (Pacemaker, etcd): they are checked with ``sh -n`` only.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Final

import pytest

from tests.deb.conftest import ROOT, DebianRoot

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]  # dpkg -i, twice

DOC: Final = ROOT / "docs" / "install.md"
_FENCE: Final = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
# Stand-ins for the operator's TLS files: the doc installs them, nothing connects.
_TLS_FILES: Final = (
    "etcd-ca.pem",
    "etcd-client.pem",
    "etcd-client.key",
    "api.pem",
    "api.key",
    "api-ca.pem",
)


def shell_blocks(text: str) -> list[tuple[frozenset[str], str]]:
    """Return ``(roles, body)`` of every ``sh`` block of ``text``, in order."""
    blocks = []
    for match in _FENCE.finditer(text):
        words = match["info"].split()
        if words[:1] == ["sh"]:
            tags = (w for w in words[1:] if w.startswith("install:"))
            roles = frozenset(w.removeprefix("install:") for w in tags)
            blocks.append((roles, match["body"]))
    return blocks


def role_script(role: str) -> str:
    """Return the doc's blocks tagged for ``role``, joined into one script."""
    return "\n".join(body for roles, body in shell_blocks(DOC.read_text()) if role in roles)


def test_the_block_parser_keeps_roles_and_order() -> None:
    text = "x\n```sh install:a install:b\none\n```\n```sh\ntwo\n```\n```toml\nno\n```\n"
    assert shell_blocks(text) == [(frozenset({"a", "b"}), "one\n"), (frozenset(), "two\n")]


@pytest.mark.parametrize("role", ["postgres-node", "app-node", "operator"])
def test_every_role_has_tagged_commands(role: str) -> None:
    assert "apt-get install" in role_script(role)


def test_untagged_blocks_are_valid_shell() -> None:
    untagged = [body for roles, body in shell_blocks(DOC.read_text()) if not roles]
    assert untagged  # alert registration, systemctl, the checks
    for body in untagged:
        result = subprocess.run(["sh", "-n"], input=body, capture_output=True, text=True,
                                check=False, timeout=10)  # fmt: skip
        assert result.returncode == 0, (body, result.stderr)


def _run_role(root: DebianRoot, *roles: str) -> str:
    setup = "mkdir -p /root/install && cd /root/install && cp /debs/*-1_*.deb . && "
    setup += " && ".join(f"echo stand-in > {name}" for name in _TLS_FILES)
    return root.out(setup + "\n" + "\n".join(role_script(role) for role in roles))


def test_a_postgres_node_and_an_operator_host_set_up_as_documented(
    fresh_debian_root: DebianRoot,
) -> None:
    root = fresh_debian_root
    out = _run_role(root, "postgres-node", "operator")
    stat = "stat -c '%U:%G %a'"
    assert root.out(f"{stat} /etc/pgcm/supervise.toml").strip() == "root:haclient 640"
    assert root.out(f"{stat} /etc/pgcm/proxy.toml").strip() == "root:postgres 640"
    assert root.out(f"{stat} /etc/pgcm/failover.toml").strip() == "root:pgcm 640"
    assert root.out(f"{stat} /etc/pgcm/tls/supervise.key").strip() == "root:haclient 640"
    assert root.out(f"{stat} /etc/pgcm/tls/proxy.key").strip() == "root:postgres 640"
    assert root.out(f"{stat} /etc/pgcm/tls/api.key").strip() == "root:haclient 640"
    supervise = root.out("cat /etc/pgcm/supervise.toml")
    token = re.search(r'^token = "(.+)"$', supervise, re.MULTILINE)
    password = re.search(r'^password = "(.+)"$', supervise, re.MULTILINE)
    assert token is not None
    assert password is not None
    assert len(token[1]) >= 32
    # PgBouncer lets pgcm-supervise (hacluster) in with the password written in both.
    assert f'"pgbouncer" "{password[1]}"' in root.out("cat /etc/pgbouncer/userlist.txt")
    # show-config ran as each service's user; secrets never reach the output.
    assert 'metrics_address = "127.0.0.1:8517"' in out
    assert 'metrics_address = "127.0.0.1:8518"' in out
    assert token[1] not in out
    assert password[1] not in out
    assert "# token = <redacted>" in out


def test_an_app_node_set_up_as_documented(fresh_debian_root: DebianRoot) -> None:
    root = fresh_debian_root
    out = _run_role(root, "app-node")
    assert root.out("dpkg-query -W -f='${Status}' pgcm-proxy") == "install ok installed"
    assert root.run("dpkg-query -W pgcm-supervise", check=False).returncode != 0
    template = root.out("cat /etc/pgcm/pgbouncer.ini.template")
    assert "app = host={{.Host}} port=5432 dbname=app" in template
    assert 'pgbouncer_config_template_file = "/etc/pgcm/pgbouncer.ini.template"' in out


def test_the_doc_names_the_packaged_paths() -> None:
    text = DOC.read_text()
    assert "/usr/libexec/pgcm/pgcm-alert-agent" in text
    assert Path(ROOT / "deploy/pacemaker/pgcm-alert-agent").exists()
