"""Verified fakes: each passes the same tests/contract suite as its real adapter."""

from __future__ import annotations
