from __future__ import annotations

from pgcm_lab.cli import main

raise SystemExit(main())
