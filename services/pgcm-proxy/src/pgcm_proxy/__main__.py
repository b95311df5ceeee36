"""``python -m pgcm_proxy``: the same as the ``pgcm-proxy`` command."""

from __future__ import annotations

import sys

from pgcm_proxy.cli import main

sys.exit(main())
