"""``python -m pgcm_supervise``: the same as the ``pgcm-supervise`` command."""

from __future__ import annotations

import sys

from pgcm_supervise.cli import main

sys.exit(main())
