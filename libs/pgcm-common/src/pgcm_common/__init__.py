"""pgcm_common."""

from __future__ import annotations
