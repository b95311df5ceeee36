"""The lab's fence helper: powers lab nodes off and on for ``fence_pgcmlab``.

Started on the host by ``Lab.up`` (``python -m pgcm_lab.fenced STATE_DIR``) and ended
by ``Lab.down``, by PID. It listens on ``STATE_DIR/fence/fence.sock``, a unix socket that
every node sees (it is a path of the host's file system, which the nodes' mount
namespaces share; a unix socket does not care about network namespaces). Each
connection carries one JSON request line, ``{"action": ..., "node": ...}``, and gets one
JSON reply line. ``off`` kills the node's init as ``pgcm-lab kill-node`` does (SIGKILL
also ends stopped processes: a hung node is powered off all the same), ``on`` starts it
as ``pgcm-lab start-node`` does, ``reboot`` does both, ``status`` says ``on`` while
the node's init lives. Actions run one at a time; each is logged with its wall-clock
time to ``STATE_DIR/fence/fenced.log``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Final

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from pgcm_lab.errors import LabError
from pgcm_lab.lab import Lab, Progress

__all__ = ["FENCE_DIR", "FencedError", "main", "parse_request", "socket_path"]

FENCE_DIR: Final = "fence"
_ACTIONS: Final = frozenset({"on", "off", "reboot", "status", "monitor", "list"})
_MAX_REQUEST: Final = 4096
_READ_TIMEOUT_S: Final = 5.0


class FencedError(ValueError):
    """A request the helper refuses."""


def socket_path(state_dir: Path) -> Path:
    """Where the helper listens for ``state_dir``'s lab."""
    return state_dir / FENCE_DIR / "fence.sock"


def parse_request(raw: bytes, nodes: frozenset[str]) -> tuple[str, str]:
    """Return ``(action, node)`` from one request line.

    Raises:
        FencedError: not a JSON object, an unknown action, or a node not in ``nodes``
            (the app node is never fenced: it is no cluster member).
    """
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise FencedError("not JSON") from exc
    if not isinstance(data, dict):
        raise FencedError("not a JSON object")
    action, node = data.get("action"), data.get("node", "")
    if not isinstance(action, str) or action not in _ACTIONS:
        raise FencedError(f"unknown action {str(action)[:40]!r}")
    if not isinstance(node, str):
        raise FencedError("node is not a string")
    if action in {"on", "off", "reboot", "status"} and node not in nodes:
        raise FencedError(f"no such cluster node {node[:40]!r}")
    return action, node


class _Helper:
    def __init__(self, state_dir: Path, log: IO[str]) -> None:
        self._state_dir = state_dir
        self._log = log
        self._nodes = frozenset(n.name for n in self._lab().topology.nodes)
        self._lock = anyio.Lock()

    def _lab(self) -> Lab:
        # Read the state afresh for each action: services started since (pgcm's) are
        # started again with the node.
        return Lab(self._state_dir, progress=Progress(self._log))

    def _note(self, text: str) -> None:
        self._log.write(f"{time.time():.3f} {text}\n")
        self._log.flush()

    async def serve(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(_READ_TIMEOUT_S):
                    raw = await BufferedByteReceiveStream(stream).receive_until(b"\n", _MAX_REQUEST)
                action, node = parse_request(raw, self._nodes)
            except (FencedError, anyio.EndOfStream, anyio.IncompleteRead, TimeoutError) as exc:
                reply: Mapping[str, object] = {"ok": False, "error": str(exc) or "bad request"}
            except anyio.DelimiterNotFound:
                reply = {"ok": False, "error": "request too long"}
            else:
                reply = await self._act(action, node)
            await stream.send(json.dumps(reply).encode() + b"\n")

    async def _act(self, action: str, node: str) -> Mapping[str, object]:
        if action == "monitor":
            return {"ok": True}
        if action == "list":
            return {"ok": True, "nodes": sorted(self._nodes)}
        async with self._lock:
            started = time.time()
            lab = self._lab()
            try:
                if action in {"off", "reboot"} and lab.init_pid(node) is not None:
                    await lab.kill_node(node)
                if action in {"on", "reboot"} and lab.init_pid(node) is None:
                    await lab.start_node(node)
            except (LabError, OSError, TimeoutError) as exc:
                self._note(f"{action} {node} failed: {exc}")
                return {"ok": False, "error": str(exc)}
            power = "on" if lab.init_pid(node) is not None else "off"
            if action != "status":
                self._note(f"{action} {node} done in {time.time() - started:.3f}s: {power}")
            return {"ok": True, "status": power}


async def _serve(state_dir: Path) -> None:
    path = socket_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with (path.parent / "fenced.log").open("a", encoding="utf-8") as log:
        helper = _Helper(state_dir, log)
        listener = await anyio.create_unix_listener(path, mode=0o600)
        (path.parent / "ready").touch()
        await listener.serve(helper.serve)


def main() -> int:
    """Entry point: ``python -m pgcm_lab.fenced STATE_DIR``."""
    if len(sys.argv) != 2:  # noqa: PLR2004  # the program and the state dir
        sys.stderr.write("usage: python -m pgcm_lab.fenced STATE_DIR\n")
        return 2
    anyio.run(_serve, Path(sys.argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
