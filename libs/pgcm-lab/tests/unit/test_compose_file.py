from __future__ import annotations

import re
from pathlib import Path

from pgcm_lab.compose import render_compose
from pgcm_lab.topology import Topology

ROOT = Path(__file__).resolve().parents[4]
COMPOSE = ROOT / "compose" / "docker-compose.yml"


def test_committed_compose_file_is_the_rendered_one() -> None:
    # Regenerate with: uv run python -m pgcm_lab.compose > compose/docker-compose.yml
    assert COMPOSE.read_text() == render_compose()


def test_compose_file_has_every_node_at_the_lab_address() -> None:
    text = render_compose()
    services = re.findall(r"^  (\w+):\n    <<: \*node$", text, flags=re.MULTILINE)
    assert services == [n.name for n in Topology().all_nodes]
    for node in Topology().all_nodes:
        assert f"ipv4_address: {node.address}\n" in text
    assert "subnet: 10.250.0.0/24" in text


def test_compose_file_is_plain_two_space_yaml_without_tabs() -> None:
    text = COMPOSE.read_text()
    assert "\t" not in text
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            indent = len(line) - len(line.lstrip(" "))
            assert indent % 2 == 0, line


def test_dockerfile_and_entrypoint_use_the_shared_renderer() -> None:
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    entrypoint = (ROOT / "compose" / "entrypoint.sh").read_text()
    assert dockerfile.startswith("# ")
    assert "FROM debian:bookworm" in dockerfile
    assert "python3 -m pgcm_lab.render" in entrypoint
    for service in ("corosync", "pacemakerd", "pgbouncer", "pg_basebackup"):
        assert service in entrypoint
