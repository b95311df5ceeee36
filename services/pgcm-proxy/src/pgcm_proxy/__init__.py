"""pgcm_proxy."""

from __future__ import annotations
