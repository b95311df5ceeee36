"""Private implementation of :mod:`pgcm_common.pgbouncer`; import from there."""

from __future__ import annotations
