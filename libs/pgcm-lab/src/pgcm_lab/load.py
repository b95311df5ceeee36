"""Parse what pgbench reports, so ``pgcm-lab load`` can say what clients saw."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import final

__all__ = ["LoadReport", "max_latency_ms", "parse_pgbench"]

_PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")
_FAILED = re.compile(r"number of failed transactions: (\d+)")
_LATENCY = re.compile(r"latency average = ([\d.]+) ms")
_TPS = re.compile(r"tps = ([\d.]+)")
_ABORTED = re.compile(r"client \d+ (?:script \d+ )?aborted")
_ERROR = re.compile(r"(?:ERROR|FATAL|error):\s*(.*)")


@final
@dataclass(frozen=True, slots=True)
class LoadReport:
    """What the pgbench clients saw."""

    clients: int
    seconds: float
    transactions: int
    failed_transactions: int
    aborted_clients: int
    latency_avg_ms: float | None
    latency_max_ms: float | None
    tps: float | None
    errors: tuple[str, ...]

    @property
    def clean(self) -> bool:
        """Whether no client saw an error."""
        return not (self.failed_transactions or self.aborted_clients or self.errors)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "clients": self.clients,
            "seconds": self.seconds,
            "transactions": self.transactions,
            "failed_transactions": self.failed_transactions,
            "aborted_clients": self.aborted_clients,
            "latency_avg_ms": self.latency_avg_ms,
            "latency_max_ms": self.latency_max_ms,
            "tps": self.tps,
            "errors": list(self.errors),
        }


def _number(pattern: re.Pattern[str], text: str) -> float | None:
    match = pattern.search(text)
    return float(match.group(1)) if match else None


def max_latency_ms(log_lines: Iterable[str]) -> float | None:
    """The largest per-transaction latency in pgbench ``--log`` lines.

    Each line is ``client_id transaction_no time script_no time_epoch time_us`` with the
    latency in microseconds; failed transactions carry a word instead of a number.
    """
    worst: int | None = None
    for line in log_lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2].isdigit():  # noqa: PLR2004  # the time field
            latency = int(fields[2])
            worst = latency if worst is None else max(worst, latency)
    return None if worst is None else worst / 1000.0


def parse_pgbench(
    stdout: str, stderr: str, *, clients: int, seconds: float, latency_max_ms: float | None
) -> LoadReport:
    """Build a :class:`LoadReport` from pgbench's output."""
    errors = tuple(
        dict.fromkeys(m.group(1).strip() for m in map(_ERROR.search, stderr.splitlines()) if m)
    )
    return LoadReport(
        clients=clients,
        seconds=seconds,
        transactions=int(_number(_PROCESSED, stdout) or 0),
        failed_transactions=int(_number(_FAILED, stdout) or 0),
        aborted_clients=len(_ABORTED.findall(stderr)),
        latency_avg_ms=_number(_LATENCY, stdout),
        latency_max_ms=latency_max_ms,
        tps=_number(_TPS, stdout),
        errors=errors,
    )
