"""How invalid settings are reported: one line per key, naming the key an operator sets."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import final

from pydantic import BaseModel, ValidationError

from pgcm_common.errors import ConfigError
from pgcm_common.settings.fields import leaves

__all__ = ["InvalidSettings", "problems_of"]


@final
class InvalidSettings(ConfigError):
    """One or more settings are invalid; each line of the message names one key.

    Attributes:
        problems: ``(key, problem)`` pairs, in the order pydantic reported them.
    """

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        key, problem = self.problems[0] if self.problems else ("<settings>", "invalid")
        super().__init__(key, problem)
        self.args = ("\n".join(f"invalid setting {k!r}: {p}" for k, p in self.problems),)


_LEADING_KEY = re.compile(r"[a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*")


def problems_of(exc: ValidationError, cls: type[BaseModel]) -> list[tuple[str, str]]:
    """Return ``(key, problem)`` for each error pydantic found, keys as operators set them."""
    problems: list[tuple[str, str]] = []
    paths = {leaf.path for leaf in leaves(cls)}
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required but not set"
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
        if key not in paths:
            key = _key_named_by(message, within=key, paths=paths)
        problems.append((key, message))
    return problems


def _key_named_by(message: str, *, within: str, paths: set[str]) -> str:
    """Return the setting a check across several settings is about.

    Such checks (model validators) have no location of their own, so pydantic reports
    them against the whole model (or sub-model). Their messages start with the key they
    are about (``"bind_address '...' is not loopback"``, ``"tokens.alice is empty"``);
    that key, when it names a setting, is more use to an operator than the model.
    """
    prefix = f"{within}." if within else ""
    match = _LEADING_KEY.match(message)
    if match is not None:
        word = match.group(0)
        for candidate in (word, word.split(".", 1)[0]):
            if prefix + candidate in paths:
                return prefix + candidate
    return within or "<settings>"
