"""pgcm_failover."""

from __future__ import annotations
