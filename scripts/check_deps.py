"""Check that every shipped distribution declares exactly the third-party packages it imports.

Run: ``uv run python scripts/check_deps.py`` (exit 1 and one line per problem otherwise).

For each member (pgcm-common and the three services) the imports of its ``src`` tree are
read with :mod:`ast` (function-level imports included), mapped to distributions with the
workspace venv's metadata, and compared with ``[project] dependencies``:

* a service must declare every third-party distribution it imports itself, nothing it
  does not import, and ``pgcm-common[extras]`` pinned to its own version (lockstep);
* the extras it asks of pgcm-common must cover the third-party imports of every
  pgcm_common module it reaches (import closure), so a service never depends on a
  package only because pgcm-common happens to pull it in for another service;
* pgcm-common declares, in its core list or in one extra, exactly what its modules
  import; every extra's packages are imported only below that extra's modules.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any, Final

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT: Final = Path(__file__).resolve().parents[1]
COMMON: Final = ROOT / "libs" / "pgcm-common"
SERVICES: Final = tuple(ROOT / "services" / name for name in ("pgcm-supervise", "pgcm-proxy",
                                                             "pgcm-failover"))  # fmt: skip
FIRST_PARTY: Final = frozenset({"pgcm_common", "pgcm_supervise", "pgcm_proxy", "pgcm_failover"})
# pgcm-common's optional parts: the extra and the module (prefix) that alone needs it.
COMMON_EXTRAS: Final[Mapping[str, tuple[str, ...]]] = {
    "pgbouncer": ("pgcm_common._pgbouncer", "pgcm_common.pgbouncer"),
    "pacemaker": ("pgcm_common._pacemaker", "pgcm_common.pacemaker"),
    "grpc": ("pgcm_common.proto", "pgcm_common._etcd.grpc_client"),
    "metrics": ("pgcm_common.metrics",),
}


@dataclass(frozen=True, slots=True)
class Module:
    """One module of a source tree: its dotted name and what it imports."""

    name: str
    imports: frozenset[str]  # dotted names as written (``from a.b import c`` gives a.b.c, a.b)


def _imports_of(path: Path, name: str) -> frozenset[str]:
    tree = ast.parse(path.read_bytes(), filename=str(path))
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(found)


def modules(src: Path) -> dict[str, Module]:
    """Return every module below ``src`` by dotted name."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = Module(name, _imports_of(path, name))
    return out


def closure(start: Iterable[str], tree: Mapping[str, Module]) -> set[str]:
    """Return the modules of ``tree`` reachable from the imports ``start`` (parents too)."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        dotted = todo.pop()
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):
            candidate = ".".join(parts[:i])
            if candidate in tree and candidate not in seen:
                seen.add(candidate)
                todo.extend(tree[candidate].imports)
    return seen


def third_party(imports: Iterable[str]) -> set[str]:
    """Return the canonical distribution names of the non-stdlib, non-pgcm ``imports``."""
    dists = packages_distributions()
    out: set[str] = set()
    for dotted in imports:
        top = dotted.split(".")[0]
        if not top or top in sys.stdlib_module_names or top in FIRST_PARTY or top == "__future__":
            continue
        if top not in dists:
            raise SystemExit(f"check_deps: no installed distribution provides {top!r}")
        out.update(canonicalize_name(d) for d in dists[top])
    return out


def _project(member: Path) -> dict[str, Any]:
    doc = tomllib.loads((member / "pyproject.toml").read_text())
    project: dict[str, Any] = doc["project"]
    return project


def _names(items: Iterable[str]) -> set[str]:
    return {canonicalize_name(Requirement(item).name) for item in items}


def _in_extra(module: str, extra: str) -> bool:
    return module.startswith(COMMON_EXTRAS[extra])


def _check_common(tree: Mapping[str, Module], project: Mapping[str, Any]) -> list[str]:
    """Core list = what modules outside every extra import; each extra = its part."""
    problems = []
    core = _names(project["dependencies"])
    extras = {e: _names(reqs) for e, reqs in project.get("optional-dependencies", {}).items()}
    if set(extras) != set(COMMON_EXTRAS):
        return [f"pgcm-common: extras {sorted(extras)} != {sorted(COMMON_EXTRAS)}"]

    def needed_by(names: Iterable[str]) -> set[str]:
        return third_party(i for n in names for i in tree[n].imports)

    outside = [n for n in tree if not any(_in_extra(n, e) for e in COMMON_EXTRAS)]
    if (got := needed_by(outside)) != core:
        problems.append(f"pgcm-common: imports {sorted(got)}, declares {sorted(core)}")
    for extra, declared in extras.items():
        got = needed_by(n for n in tree if _in_extra(n, extra)) - core
        if got != declared:
            problems.append(
                f"pgcm-common[{extra}]: imports {sorted(got)}, declares {sorted(declared)}"
            )
    return problems


def _check_service(member: Path, common_tree: Mapping[str, Module], version: str) -> list[str]:
    project = _project(member)
    name = project["name"]
    own = modules(member / "src")
    reqs = [Requirement(item) for item in project["dependencies"]]
    declared = {canonicalize_name(r.name) for r in reqs} - {"pgcm-common"}
    imported = third_party(i for m in own.values() for i in m.imports)
    problems = []
    if imported != declared:
        problems.append(f"{name}: imports {sorted(imported)}, declares {sorted(declared)}")
    if project["version"] != version:
        problems.append(f"{name}: version {project['version']} != pgcm-common {version}")
    pins = [r for r in reqs if canonicalize_name(r.name) == "pgcm-common"]
    if len(pins) != 1 or str(pins[0].specifier) != f"=={version}":
        return [*problems, f"{name}: must require pgcm-common=={version} (lockstep)"]
    reached = closure((i for m in own.values() for i in m.imports), common_tree)
    wanted = {e for e in COMMON_EXTRAS if any(_in_extra(n, e) for n in reached)}
    if set(pins[0].extras) != wanted:
        problems.append(
            f"{name}: reaches pgcm-common extras {sorted(wanted)}, "
            f"requests {sorted(pins[0].extras)}"
        )
    return problems


def check() -> list[str]:
    """Return one line per mismatch between imports and declared dependencies."""
    common_tree = modules(COMMON / "src")
    common = _project(COMMON)
    problems = _check_common(common_tree, common)
    for member in SERVICES:
        problems += _check_service(member, common_tree, common["version"])
    return problems


def main() -> int:
    """Print every problem; return 1 when there is one."""
    problems = check()
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
