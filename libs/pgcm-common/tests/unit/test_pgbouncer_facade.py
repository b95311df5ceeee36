from __future__ import annotations

import subprocess
import sys

import pytest

import pgcm_common.pgbouncer as facade
from pgcm_common._pgbouncer import admin


def _loaded_after(code: str) -> str:
    probe = f"import sys\n{code}\nprint('asyncpg' in sys.modules)\n"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return result.stdout.strip()


def test_the_routing_console_and_settings_do_not_load_asyncpg() -> None:
    code = "from pgcm_common.pgbouncer import RoutingConsole, PgBouncerSettings, DatabaseRow"
    assert _loaded_after(code) == "False"


def test_the_admin_client_loads_asyncpg_when_asked_for() -> None:
    assert _loaded_after("from pgcm_common.pgbouncer import PgBouncerAdmin") == "True"


@pytest.mark.parametrize("name", ["PgBouncerAdmin", "PgBouncerAdminProtocol", "admins_for"])
def test_the_admin_names_are_the_admin_modules(name: str) -> None:
    assert getattr(facade, name) is getattr(admin, name)
    assert name in facade.__all__


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = facade.no_such_name
