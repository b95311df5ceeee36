"""Run a packaged systemd service without systemd: its ExecStart, user and environment.

The compose containers cannot run systemd as PID 1 without ``privileged`` (see
compose/README.md), so :mod:`pgcm_lab.node` reads the unit file the .deb installed and
starts exactly what systemd would: ``ExecStart`` (``%d`` is the credentials directory),
as ``User``/``Group`` with their supplementary groups, with ``Environment=``, ``UMask``,
``RuntimeDirectory`` and ``LoadCredential`` (a private copy of the configuration,
readable by the service's user only), restarting it after a failure as ``Restart=`` /
``RestartSec`` / ``RestartPreventExitStatus`` say. The sandboxing options and the
notify/watchdog protocol are systemd's own and are not emulated.

Standard library only (the containers run it with Debian's ``python3``).
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, final

__all__ = ["UnitError", "UnitSpec", "parse_duration", "parse_unit", "prepare"]

CREDENTIALS_ROOT: Final = Path("/run/credentials")
_SUFFIXES: Final = {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0}


class UnitError(ValueError):
    """A unit file this runner cannot run as written (the message says which line)."""


@final
@dataclass(frozen=True, slots=True)
class UnitSpec:
    """What systemd would run for one ``[Service]`` section."""

    name: str
    exec_start: tuple[str, ...]
    user: str = "root"
    group: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)
    runtime_directories: tuple[str, ...] = ()
    runtime_directory_mode: int = 0o755
    umask: int = 0o022
    restart: str = "no"
    restart_sec: float = 0.1
    restart_prevent: frozenset[int] = frozenset()

    def restarts_after(self, returncode: int) -> bool:
        """Whether systemd would restart the service after it exited with ``returncode``.

        Only ``no``, ``always`` and ``on-failure`` are supported (what pgcm's units use).
        A signal death (negative code) counts as a failure.
        """
        if returncode in self.restart_prevent or self.restart == "no":
            return False
        return self.restart == "always" or returncode != 0


def parse_duration(text: str) -> float:
    """Seconds in a systemd time span such as ``2s``, ``500ms``, ``1min`` or ``3``.

    Raises:
        UnitError: not a time span this runner understands.
    """
    value = text.strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if value.endswith(suffix) and value[: -len(suffix)].strip().replace(".", "", 1).isdigit():
            return float(value[: -len(suffix)]) * _SUFFIXES[suffix]
    if value.replace(".", "", 1).isdigit():
        return float(value)
    raise UnitError(f"not a time span: {text!r}")


def _environment(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for word in shlex.split(value):
        key, sep, val = word.partition("=")
        if not sep or not key:
            raise UnitError(f"Environment= needs KEY=VALUE, got {word!r}")
        out[key] = val
    return out


# Keys whose value becomes one UnitSpec field, with the parser of that value.
_SCALARS: Final[dict[str, tuple[str, Callable[[str], object]]]] = {
    "User": ("user", str),
    "Group": ("group", str),
    "RuntimeDirectory": ("runtime_directories", lambda v: tuple(v.split())),
    "RuntimeDirectoryMode": ("runtime_directory_mode", lambda v: int(v, 8)),
    "UMask": ("umask", lambda v: int(v, 8)),
    "Restart": ("restart", str),
    "RestartSec": ("restart_sec", parse_duration),
    "RestartPreventExitStatus": ("restart_prevent", lambda v: frozenset(map(int, v.split()))),
}


def _service_lines(name: str, text: str) -> Iterator[tuple[str, str]]:
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == "Service":
            key, sep, value = line.partition("=")
            if not sep:
                raise UnitError(f"{name}: not KEY=VALUE: {line!r}")
            yield key.strip(), value.strip()


def _exec_start(name: str, values: list[str]) -> tuple[str, ...]:
    if len(values) != 1:
        raise UnitError(f"{name}: expected one ExecStart=, found {len(values)}")
    if values[0][:1] in "-+!@:":
        raise UnitError(f"{name}: ExecStart prefix {values[0][0]!r} is not supported")
    words = tuple(shlex.split(values[0]))
    for word in words:
        if "%" in word.replace("%d", "").replace("%%", ""):
            raise UnitError(f"{name}: unsupported specifier in ExecStart word {word!r}")
    return words


def parse_unit(name: str, text: str) -> UnitSpec:
    """Parse the ``[Service]`` section of unit ``name`` (its file's ``text``).

    Raises:
        UnitError: no ``ExecStart=``, more than one, a prefix this runner does not
            honour (``-``, ``+``, ``!``, ``@``, ``:``), an ``ExecStart`` using a
            specifier other than ``%d`` and ``%%``, a ``Restart=`` other than ``no``,
            ``always`` and ``on-failure``, or a value that does not parse.
    """
    fields: dict[str, object] = {}
    environment: dict[str, str] = {}
    credentials: dict[str, str] = {}
    exec_start: list[str] = []
    for key, value in _service_lines(name, text):
        try:
            if key == "ExecStart":
                exec_start.append(value)
            elif key == "Environment":
                environment.update(_environment(value))
            elif key == "LoadCredential":
                cred, _, path = value.partition(":")
                credentials[cred] = path
            elif key in _SCALARS:
                field_name, parse = _SCALARS[key]
                fields[field_name] = parse(value)
        except ValueError as exc:
            raise UnitError(f"{name}: {key}={value}: {exc}") from exc
    if fields.get("restart", "no") not in {"no", "always", "on-failure"}:
        raise UnitError(f"{name}: Restart={fields['restart']} is not supported")
    return UnitSpec(
        name=name,
        exec_start=_exec_start(name, exec_start),
        environment=environment,
        credentials=credentials,
        **fields,  # type: ignore[arg-type]  # each value was parsed to its field's type
    )


def credentials_dir(spec: UnitSpec) -> Path:
    """Where the service's credentials go (``$CREDENTIALS_DIRECTORY``, ``%d``)."""
    return CREDENTIALS_ROOT / f"{spec.name}.service"


def prepare(spec: UnitSpec, *, chown: bool = True) -> tuple[list[str], dict[str, str]]:
    """Create the runtime directories and credentials; return ``(argv, extra_env)``.

    Credentials are private copies, owned by the service's user, mode 0400, in a 0500
    directory: the user reads the configuration, nobody else does, and the file in
    ``/etc/pgcm`` stays root's. ``chown`` false leaves owners alone (tests as non-root).
    """
    uid, gid = _ids(spec) if chown else (-1, -1)
    for name in spec.runtime_directories:
        path = Path("/run") / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(spec.runtime_directory_mode)
        if chown:
            os.chown(path, uid, gid)
    env = dict(spec.environment)
    creds = credentials_dir(spec)
    if spec.credentials:
        creds.mkdir(parents=True, exist_ok=True)
        for cred, source in spec.credentials.items():
            target = creds / cred
            shutil.copyfile(source, target)
            target.chmod(0o400)
            if chown:
                os.chown(target, uid, gid)
        creds.chmod(0o500)
        if chown:
            os.chown(creds, uid, gid)
        env["CREDENTIALS_DIRECTORY"] = str(creds)
    argv = [w.replace("%d", str(creds)).replace("%%", "%") for w in spec.exec_start]
    return argv, env


def _ids(spec: UnitSpec) -> tuple[int, int]:
    import grp  # noqa: PLC0415  # POSIX-only; imported where used so the module loads anywhere
    import pwd  # noqa: PLC0415

    entry = pwd.getpwnam(spec.user)
    gid = grp.getgrnam(spec.group).gr_gid if spec.group else entry.pw_gid
    return entry.pw_uid, gid
