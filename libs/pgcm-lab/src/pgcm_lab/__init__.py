"""pgcm_lab."""

from __future__ import annotations
