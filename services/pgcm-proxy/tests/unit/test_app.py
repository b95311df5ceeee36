from __future__ import annotations

from pathlib import Path

import pytest

from pgcm_proxy.app import load_template
from pgcm_proxy.errors import TemplateError


async def test_template_without_a_routed_database_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_text("[pgbouncer]\nlisten_addr = {{.Host}}\n")
    with pytest.raises(TemplateError, match="no \\[databases\\] entry"):
        await load_template(path)


async def test_the_shipped_sample_template_loads() -> None:
    sample = Path(__file__).parents[4] / "deploy" / "proxy" / "pgbouncer.ini.template"
    template = await load_template(sample)
    assert template.routed_databases()
