"""fence_pgcmlab's interface and the fence helper's request checks (no lab needed)."""

from __future__ import annotations

import io
import json
import socket
import threading
from pathlib import Path

import pytest
from defusedxml import ElementTree

from pgcm_lab.fence_agent import ACTIONS, EXIT_FAIL, EXIT_OFF, METADATA, main, parse_options
from pgcm_lab.fence_agent import request_for as agent_request
from pgcm_lab.fenced import FencedError, parse_request

NODES = frozenset({"n1", "n2", "n3"})


def test_metadata_is_the_xml_pacemaker_reads_with_every_action() -> None:
    root = ElementTree.fromstring(METADATA)
    assert root.tag == "resource-agent"
    assert root.get("name") == "fence_pgcmlab"
    actions = {a.get("name") for a in root.iter("action")}
    assert actions == set(ACTIONS)
    params = {p.get("name") for p in root.iter("parameter")}
    assert {"action", "plug", "port", "lab_socket"} <= params


def test_options_come_from_stdin_lines_and_arguments_win() -> None:
    lines = ["# a comment", "", "action=off", "port=n2", "nodename=n2", "no equals sign",
             "lab_socket = /s"]  # fmt: skip
    assert parse_options(lines) == {"action": "off", "port": "n2", "nodename": "n2",
                                    "lab_socket": "/s"}  # fmt: skip
    assert parse_options(["action=off"], ["-o", "status", "--plug=n3"]) == {
        "action": "status",
        "plug": "n3",
    }
    assert parse_options(["option=reboot"])["action"] == "reboot"


def test_the_target_is_plug_then_port_then_nodename() -> None:
    base = {"action": "off", "lab_socket": "/s"}
    assert agent_request({**base, "plug": "n1", "port": "n2"})["node"] == "n1"
    assert agent_request({**base, "port": "n2", "nodename": "n3"})["node"] == "n2"
    assert agent_request({**base, "nodename": "n3"})["node"] == "n3"
    assert agent_request({"action": "monitor", "lab_socket": "/s"}) == {
        "action": "monitor",
        "node": "",
    }


@pytest.mark.parametrize(
    "options",
    [
        {"action": "off", "lab_socket": "/s"},  # no node
        {"action": "explode", "plug": "n1", "lab_socket": "/s"},
        {"action": "off", "plug": "n1"},  # no socket
    ],
)
def test_the_agent_refuses_incomplete_or_unknown_requests(options: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"needs plug|unsupported action|lab_socket"):
        agent_request(options)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"action": "off", "node": "app"}', "no such cluster node"),
        (b'{"action": "off", "node": "n1; rm -rf /"}', "no such cluster node"),
        (b'{"action": "off"}', "no such cluster node"),
        (b'{"action": "shutdown", "node": "n1"}', "unknown action"),
        (b'{"action": ["off"], "node": "n1"}', "unknown action"),
        (b'{"action": "off", "node": 1}', "not a string"),
    ],
)
def test_the_helper_refuses_bad_requests(raw: bytes, message: str) -> None:
    with pytest.raises(FencedError, match=message):
        parse_request(raw, NODES)


def test_the_helper_accepts_the_agents_requests() -> None:
    assert parse_request(b'{"action": "off", "node": "n2"}\n', NODES) == ("off", "n2")
    assert parse_request(b'{"action": "list"}', NODES) == ("list", "")


def answer_once(path: Path, reply: dict[str, object]) -> threading.Thread:
    """A one-shot fake helper on ``path`` that records the request and answers ``reply``."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, server:
            request = conn.recv(4096)
            (path.parent / "request").write_bytes(request)
            conn.sendall(json.dumps(reply).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("power", "code"), [("on", 0), ("off", EXIT_OFF)])
def test_status_exit_codes_follow_the_fence_agent_convention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    power: str, code: int,
) -> None:  # fmt: skip
    path = tmp_path / "fence.sock"
    thread = answer_once(path, {"ok": True, "status": power})
    monkeypatch.setattr("sys.stdin", io.StringIO(f"action=status\nplug=n2\nlab_socket={path}\n"))
    assert main([]) == code
    thread.join(5)
    assert json.loads((tmp_path / "request").read_bytes()) == {"action": "status", "node": "n2"}
    assert capsys.readouterr().out == f"Status: {power.upper()}\n"


def test_an_unreachable_helper_fails_the_action(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = f"action=off\nplug=n1\nlab_socket={tmp_path / 'absent.sock'}\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main([]) == EXIT_FAIL
