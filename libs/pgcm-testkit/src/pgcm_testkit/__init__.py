"""pgcm_testkit."""

from __future__ import annotations
