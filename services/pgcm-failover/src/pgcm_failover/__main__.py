"""``python -m pgcm_failover``: the same as the ``pgcm-failover`` command."""

from __future__ import annotations

import sys

from pgcm_failover.cli import main

sys.exit(main())
