"""The legacy ``ocf:heartbeat:pgsql`` agent in the lab: a fixed copy seen by nodes only.

On Debian 12 (resource-agents 4.12, Pacemaker 2.1) the agent's promotion score helper
runs ``crm_attribute -p -v -INFINITY``: ``-p`` takes an optional resource name, so
``-INFINITY`` is read as options (``-I -N FINITY``: "Could not map name=FINITY to a
UUID") and the agent cannot mark a standby unpromotable. The lab writes a copy of the
installed agent with that helper redefined and lays it over the agent's directory
inside each node (read-only overlay); the host's file is never changed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from pgcm_lab.errors import LabError

__all__ = ["AGENT_DIR", "INSTALLED_AGENT", "PGSQL_LOCK", "patch_agent", "write_patched_agent"]

AGENT_DIR: Final = "/usr/lib/ocf/resource.d/heartbeat"
INSTALLED_AGENT: Final = Path(AGENT_DIR) / "pgsql"
# The agent leaves this in its tmpdir when a primary stops; it then refuses to start
# the node again until an operator removes it (render.LEGACY_TMPDIR).
PGSQL_LOCK: Final = "PGSQL.lock"

_SOURCING: Final = re.compile(r"^\. \$\{OCF_FUNCTIONS_DIR\}/ocf-shellfuncs[ \t]*$", re.MULTILINE)
_FIX: Final = """
# pgcm lab: crm_attribute's -p takes an optional argument, so the stock helper's
# "-p -v -INFINITY" reads "-INFINITY" as options. Name the resource and pass the value
# attached to its option instead.
ocf_promotion_score() {
    if [ "$1" = "-v" ]; then
        value=$2
        shift 2
        set -- "--update=$value" "$@"
    fi
    "${HA_SBIN_DIR}/crm_attribute" --promotion="${OCF_RESOURCE_INSTANCE%%:*}" "$@"
}
"""


def patch_agent(text: str) -> str:
    """Return the agent's script with ``ocf_promotion_score`` redefined after the library.

    Raises:
        LabError: the script does not source ``ocf-shellfuncs`` the way the fix expects.
    """
    match = _SOURCING.search(text)
    if match is None:
        raise LabError("the pgsql agent does not source ocf-shellfuncs: cannot patch it")
    return text[: match.end()] + "\n" + _FIX + text[match.end() :]


def write_patched_agent(directory: Path, installed: Path = INSTALLED_AGENT) -> Path:
    """Write the patched copy of ``installed`` into ``directory`` (executable); return it.

    Raises:
        LabError: the agent is not installed or cannot be patched.
    """
    try:
        text = installed.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise LabError(f"{installed} is missing: install resource-agents") from exc
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / installed.name
    target.write_text(patch_agent(text), encoding="utf-8")
    target.chmod(0o755)
    return target
