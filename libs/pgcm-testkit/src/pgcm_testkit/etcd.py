"""Test kit: real etcd fixtures (filled in by the etcd work)."""

from __future__ import annotations
