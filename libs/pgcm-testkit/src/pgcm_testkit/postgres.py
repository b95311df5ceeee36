"""Test kit: real postgres fixtures (filled in by the postgres work)."""

from __future__ import annotations
