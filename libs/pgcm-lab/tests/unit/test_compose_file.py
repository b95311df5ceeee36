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
    services = re.findall(r"^  (\w+):\n    <<: \*(?:db|app)$", text, flags=re.MULTILINE)
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


def test_compose_file_is_not_privileged_and_publishes_nothing() -> None:
    text = render_compose()
    assert "privileged" not in text
    assert "ports:" not in text
    assert "network_mode" not in text


def test_each_role_builds_its_own_stage_once_and_the_others_reuse_it() -> None:
    text = render_compose()
    assert text.count("target: db") == 1
    assert text.count("target: app") == 1
    assert text.count("pull_policy: never") == Topology().size - 1
    assert "image: pgcmlab-db:latest" in text
    assert "image: pgcmlab-app:latest" in text


def test_dockerfile_installs_each_roles_debs_through_the_shared_provisioning() -> None:
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    assert dockerfile.startswith("# ")
    assert "FROM debian:bookworm AS base" in dockerfile
    assert "pip" not in dockerfile  # nothing from the Python package index in the image
    for role in ("db", "app"):
        assert f"FROM base AS {role}" in dockerfile
        assert f"python3 -m pgcm_lab.node install --role {role}" in dockerfile
    assert 'CMD ["python3", "-m", "pgcm_lab.node", "run"]' in dockerfile
