"""``fence_pgcmlab``: the lab's fence agent, with the standard fence-agent interface.

Pacemaker's fencer runs it inside a lab node as ``/usr/sbin/fence_pgcmlab`` (an overlay
of the node's ``/usr/sbin``, see :mod:`pgcm_lab.init`) and writes its arguments to its
standard input, one ``key=value`` per line: ``action`` (``on``, ``off``, ``reboot``,
``status``, ``monitor``, ``list``, ``metadata``, ``validate-all``), the target node in
``plug`` (or ``port``, or Pacemaker's ``nodename``) and ``lab_socket``. ``-o ACTION``
and ``-n NODE`` on the command line work too.

A node cannot reach another node's processes: each has its own PID namespace. So the
agent asks the host: it sends one JSON line to the lab's fence helper
(:mod:`pgcm_lab.fenced`) over ``lab_socket``, a unix socket in the lab's state
directory (visible in every node, as the whole host file system is), and prints what
the helper answered. Only the standard library: Pacemaker starts it for every monitor.

Exit codes as every fence agent: 0 success (``status``: the node is on), 1 failure,
2 ``status`` of a node that is off.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

__all__ = [
    "ACTIONS",
    "EXIT_FAIL",
    "EXIT_OFF",
    "METADATA",
    "main",
    "parse_options",
    "request_for",
]

NAME: Final = "fence_pgcmlab"
ACTIONS: Final = (
    "on", "off", "reboot", "status", "monitor", "list", "metadata", "validate-all",
)  # fmt: skip
EXIT_FAIL: Final = 1
EXIT_OFF: Final = 2
TIMEOUT_S: Final = 50.0  # under Pacemaker's default 60 s fencing timeout
_MAX_REPLY: Final = 65536

METADATA: Final = f"""<?xml version="1.0" ?>
<resource-agent name="{NAME}" shortdesc="Fence agent for the nodes of the pgcm lab">
<longdesc>Powers a pgcm lab node off (every process of its namespaces is killed, as
pgcm-lab kill-node does) or on (pgcm-lab start-node), through the lab's host-side fence
helper listening on lab_socket.</longdesc>
<vendor-url>https://www.clusterlabs.org/</vendor-url>
<parameters>
  <parameter name="action" unique="0" required="1">
    <getopt mixed="-o, --action=[action]"/>
    <content type="string" default="reboot"/>
    <shortdesc lang="en">Fencing action</shortdesc>
  </parameter>
  <parameter name="plug" unique="0" required="1" obsoletes="port">
    <getopt mixed="-n, --plug=[id]"/>
    <content type="string"/>
    <shortdesc lang="en">The lab node (n1, n2, ...)</shortdesc>
  </parameter>
  <parameter name="port" unique="0" required="0" deprecated="1">
    <getopt mixed="-n, --plug=[id]"/>
    <content type="string"/>
    <shortdesc lang="en">The lab node (n1, n2, ...)</shortdesc>
  </parameter>
  <parameter name="lab_socket" unique="0" required="1">
    <content type="string"/>
    <shortdesc lang="en">The lab's fence helper socket (state dir/fence/fence.sock)</shortdesc>
  </parameter>
</parameters>
<actions>
  <action name="on" automatic="0"/>
  <action name="off"/>
  <action name="reboot"/>
  <action name="status"/>
  <action name="list"/>
  <action name="monitor"/>
  <action name="metadata"/>
  <action name="validate-all"/>
</actions>
</resource-agent>
"""


def parse_options(stdin_lines: Iterable[str], argv: Sequence[str] = ()) -> dict[str, str]:
    """The options from ``key=value`` lines and ``-o/-n/--action=/--plug=`` arguments.

    Blank lines and ``#`` comments are skipped, as are lines without ``=``. Arguments
    win over standard input.
    """
    options: dict[str, str] = {}
    for raw in stdin_lines:
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        options[key.strip()] = value.strip()
    args = list(argv)
    while args:
        arg = args.pop(0)
        for short, long, key in (("-o", "--action", "action"), ("-n", "--plug", "plug")):
            if arg in {short, long} and args:
                options[key] = args.pop(0)
            elif arg.startswith(f"{long}="):
                options[key] = arg.partition("=")[2]
    # The fence-agents spelling of the action key is "option" in old configurations.
    if "action" not in options and "option" in options:
        options["action"] = options["option"]
    return options


def request_for(options: Mapping[str, str]) -> dict[str, str]:
    """The helper request for ``options``.

    Raises:
        ValueError: unknown action, no socket, or no node for an action that needs one.
    """
    action = options.get("action", "reboot")
    if action not in ACTIONS or action in {"metadata", "validate-all"}:
        raise ValueError(f"unsupported action {action[:40]!r}")
    if not options.get("lab_socket"):
        raise ValueError("lab_socket is not set")
    node = options.get("plug") or options.get("port") or options.get("nodename") or ""
    if action in {"on", "off", "reboot", "status"} and not node:
        raise ValueError(f"{action} needs plug=NODE")
    return {"action": action, "node": node}


def _ask(path: str, request: Mapping[str, str]) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(TIMEOUT_S)
        conn.connect(path)
        conn.sendall(json.dumps(request).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n") and len(reply) < _MAX_REPLY:
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
    data = json.loads(reply)
    if not isinstance(data, dict):
        raise TypeError("the fence helper's reply is not an object")
    return data


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911  # one exit per outcome
    """Run one fence action; see the module documentation for the interface."""
    args = sys.argv[1:] if argv is None else list(argv)
    lines = [] if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read().splitlines()
    options = parse_options(lines, args)
    action = options.get("action", "reboot")
    if action == "metadata":
        sys.stdout.write(METADATA)
        return 0
    try:
        request = request_for(options)
    except ValueError as exc:
        sys.stderr.write(f"{NAME}: {exc}\n")
        return EXIT_FAIL
    if action == "validate-all":
        return 0
    try:
        reply = _ask(options["lab_socket"], request)
    except (OSError, ValueError, TypeError) as exc:
        sys.stderr.write(f"{NAME}: the lab's fence helper did not answer: {exc}\n")
        return EXIT_FAIL
    if not reply.get("ok"):
        sys.stderr.write(f"{NAME}: {action} {request['node']} failed: {reply.get('error')}\n")
        return EXIT_FAIL
    if action == "list":
        nodes = reply.get("nodes")
        for node in nodes if isinstance(nodes, list) else []:
            sys.stdout.write(f"{node},{node}\n")
    elif action == "status":
        power = reply.get("status")
        sys.stdout.write(f"Status: {str(power).upper()}\n")
        return 0 if power == "on" else EXIT_OFF
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
