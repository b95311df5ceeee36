"""Test kit: real pacemaker fixtures (filled in by the pacemaker work)."""

from __future__ import annotations
