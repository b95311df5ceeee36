"""The pgbouncer.ini template: the original's Go-template placeholder, nothing more.

Templates written for the original use ``{{.Host}}`` (also seen as ``{{ .Host }}``).
Any other ``{{…}}`` action is an error reported with its line, at start-up and at each
render, so an operator's typo never reaches PgBouncer and never crashes the proxy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, final

from pgcm_proxy.address import PrimaryAddress
from pgcm_proxy.errors import TemplateError

__all__ = ["ConfigTemplate"]

_ACTION: Final = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_HOST_ACTION: Final = re.compile(r"\s*\.Host\s*")


@final
@dataclass(frozen=True, slots=True)
class ConfigTemplate:
    """A parsed template: the literal text split around each ``{{.Host}}``."""

    source: str
    literal_parts: tuple[str, ...]

    @classmethod
    def parse(cls, source: str, *, origin: str = "<template>") -> ConfigTemplate:
        """Parse ``source``; ``origin`` names the file in error messages.

        Raises:
            TemplateError: an action other than ``.Host``, an unclosed ``{{``, or no
                ``{{.Host}}`` at all (the rendered file would never follow the primary).
        """
        parts: list[str] = []
        position = 0
        for match in _ACTION.finditer(source):
            if not _HOST_ACTION.fullmatch(match.group(1)):
                raise TemplateError(
                    origin,
                    _line_of(source, match.start()),
                    f"unsupported action {match.group(0)!r}",
                )
            parts.append(source[position : match.start()])
            position = match.end()
        tail = source[position:]
        if "{{" in tail:
            raise TemplateError(
                origin, _line_of(source, position + tail.index("{{")), "unclosed '{{'"
            )
        parts.append(tail)
        if len(parts) == 1:
            raise TemplateError(origin, None, "no {{.Host}} placeholder")
        return cls(source, tuple(parts))

    def render(self, address: PrimaryAddress) -> str:
        """Return the configuration text with every placeholder replaced by ``address``."""
        return address.host.join(self.literal_parts)

    def routed_databases(self) -> frozenset[str]:
        """Return the ``[databases]`` entries whose line holds the placeholder.

        These are the databases that must route to the new host after a RELOAD: the
        proxy confirms each of them with ``SHOW DATABASES`` before acknowledging.
        Comment lines and the ``*`` fallback (PgBouncer lists it only once a client
        used it) are left out.
        """
        names: set[str] = set()
        section = ""
        for line in self.source.splitlines():
            text = line.strip()
            if not text or text.startswith((";", "#")):
                continue
            if text.startswith("[") and text.endswith("]"):
                section = text[1:-1].strip().lower()
                continue
            if section != "databases" or "=" not in text or not _ACTION.search(text):
                continue
            name = text.split("=", 1)[0].strip().strip('"')
            if name and name != "*":
                names.add(name)
        return frozenset(names)


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1
