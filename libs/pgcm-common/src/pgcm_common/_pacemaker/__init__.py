"""Private implementation of :mod:`pgcm_common.pacemaker`; import from there."""

from __future__ import annotations
