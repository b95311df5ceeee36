"""Each shipped distribution declares exactly what it imports (scripts/check_deps.py)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _check_deps() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_deps", ROOT / "scripts" / "check_deps.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_deps"] = module  # dataclasses resolve the module by name
    spec.loader.exec_module(module)
    return module


def test_every_distribution_declares_exactly_what_it_imports() -> None:
    assert _check_deps().check() == []


def test_function_level_and_relative_imports_are_seen(tmp_path: Path) -> None:
    check_deps = _check_deps()
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        textwrap.dedent(
            """
            from . import b
            def f() -> None:
                import structlog
            """
        )
    )
    (package / "b.py").write_text("from anyio import sleep\n")
    tree = check_deps.modules(tmp_path)
    assert "structlog" in tree["pkg.a"].imports
    assert "pkg.b" in tree["pkg.a"].imports
    assert check_deps.closure(["pkg.a"], tree) == {"pkg", "pkg.a", "pkg.b"}
    imports = ["structlog.dev", "anyio", "os.path", "__future__", "pgcm_common.settings"]
    assert check_deps.third_party(imports) == {"structlog", "anyio"}
