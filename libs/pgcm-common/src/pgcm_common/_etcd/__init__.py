"""Private implementation of :mod:`pgcm_common.etcd`; import from there."""

from __future__ import annotations
