"""pgcm_supervise."""

from __future__ import annotations
