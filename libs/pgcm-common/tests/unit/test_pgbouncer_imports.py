"""The PgBouncer admin client carries no PostgreSQL driver (ADR 0005)."""

from __future__ import annotations

import subprocess
import sys


def test_the_admin_console_client_imports_no_postgres_driver() -> None:
    # A fresh interpreter: this test process may have imported asyncpg for other tests.
    probe = (
        "import sys, pgcm_common.pgbouncer; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'asyncpg', 'psycopg'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
