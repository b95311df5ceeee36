"""Test kit: real pgbouncer fixtures (filled in by the pgbouncer work)."""

from __future__ import annotations
