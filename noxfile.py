"""Developer and CI sessions. Run ``uv run nox -l`` to list them.

Sessions run inside the uv workspace venv (``uv sync --all-packages``) instead of
building one venv each: the workspace is already locked, and CI time matters. The
``build`` session is the exception: it proves each wheel installs alone in a fresh venv.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = [
    "lint",
    "typecheck",
    "protos",
    "unit",
    "alerts",
    "integration",
    "lab",
    "build",
]
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
MEMBERS = sorted(
    [p.parent for p in ROOT.glob("libs/*/pyproject.toml")]
    + [p.parent for p in ROOT.glob("services/*/pyproject.toml")]
)
SERVICES = ["pgcm-supervise", "pgcm-proxy", "pgcm-failover", "pgcm-lab"]
PROTO_OUT = ROOT / "libs/pgcm-common/src/pgcm_common/proto"


def _test_dirs(kind: str) -> list[str]:
    return [str(d) for m in MEMBERS if (d := m / "tests" / kind).is_dir()]


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint + format check, and the import-linter layering contracts."""
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over every member's src and tests, one member at a time.

    One run per member because every member has a ``tests/unit`` tree: mypy would see
    the same module name twice in one run.
    """
    for member in MEMBERS:
        test_dirs = [
            d for d in sorted((member / "tests").glob("*")) if d.is_dir() and any(d.rglob("*.py"))
        ]
        # Test trees with a conftest.py each get a run of their own: two would be two
        # top-level modules named "conftest" in one run.
        with_conftest = [d for d in test_dirs if (d / "conftest.py").exists()]
        rest = [str(d) for d in test_dirs if d not in with_conftest]
        session.run("mypy", str(member / "src"), *rest, *map(str, with_conftest[:1]))
        for extra in with_conftest[1:]:
            session.run("mypy", str(extra))
    if (ROOT / "tests").is_dir() and any((ROOT / "tests").rglob("*.py")):
        session.run("mypy", "tests")
    session.run("mypy", "benchmarks")
    session.run("mypy", "packaging/build_debs.py", "scripts/check_deps.py")
    session.run("mypy", "noxfile.py")


@nox.session
def unit(session: nox.Session) -> None:
    """Unit and contract tests, plus the bad-input suite at its small default sample size.

    Contract suites also run against real servers; ``nox -s fuzz`` runs the bad-input
    suite at full size.
    """
    session.run(
        "pytest",
        *_test_dirs("unit"),
        *_test_dirs("contract"),
        "tests/cli",
        "tests/bench",
        "tests/deps",
        "tests/fuzz",
        "tests/consistency",
        *session.posargs,
    )


@nox.session
def alerts(session: nox.Session) -> None:
    """The shipped Prometheus rules and Grafana dashboard (needs promtool, Debian prometheus).

    ``promtool check rules`` and the rules' unit tests, then the tests tying the rules,
    their tests and the dashboard to the metrics the code exports.
    """
    rules = ROOT / "deploy/prometheus"
    session.run("promtool", "check", "rules", str(rules / "pgcm-alerts.yml"), external=True)
    # promtool resolves rule_files relative to the working directory.
    with session.chdir(rules):
        session.run("promtool", "test", "rules", "pgcm-alerts.test.yml", external=True)
    session.run(
        "pytest",
        "tests/consistency/test_monitoring_assets.py",
        *session.posargs,
        env={"PGCM_REQUIRE_BINARIES": "1"},
    )


@nox.session
def integration(session: nox.Session) -> None:
    """Integration tests against real etcd, PostgreSQL, PgBouncer and Pacemaker.

    Also the shipped systemd units under a real systemd (PID 1 of its own namespaces).
    """
    # tests/systemd runs the units as the .debs install them: build those once here.
    debs = ROOT / "build" / "debs-integration"
    shutil.rmtree(debs, ignore_errors=True)
    session.run("python", "packaging/build_debs.py", str(debs))
    session.run(
        "pytest", *_test_dirs("integration"), "tests/security", "tests/systemd", *session.posargs,
        env={"PGCM_DEBS": str(debs)},
    )  # fmt: skip


@nox.session
def fuzz(session: nox.Session) -> None:
    """Bad-input suite at full size: >= 10 000 hypothesis cases per property (PGCM_FUZZ=1).

    crm_mon XML, settings and etcd records, etcd values and templates seen by the proxy,
    failover API request bodies and ``migrate_to`` targets; ``--hypothesis-show-statistics``
    reports the cases run per property.
    """
    session.run(
        "pytest",
        "tests/fuzz",
        "--hypothesis-show-statistics",
        "--timeout=1800",  # 10 000 cases of one property outlast the 120 s test default
        *session.posargs,
        env={"PGCM_FUZZ": "1"},
    )


@nox.session
def lab(session: nox.Session) -> None:
    """Tests that bring up the 3-node lab (root and network namespaces needed)."""
    dirs = [str(d) for m in MEMBERS if (d := m / "tests" / "lab").is_dir()]
    if dirs:
        session.run("pytest", *dirs, *session.posargs)


@nox.session
def e2e(session: nox.Session) -> None:
    """End-to-end tests of the three services in the lab."""
    if (ROOT / "tests/e2e").is_dir() and any((ROOT / "tests/e2e").glob("test_*.py")):
        session.run("pytest", "tests/e2e", *session.posargs)
    # A lab of its own (the legacy ocf:heartbeat:pgsql agent): a pytest run of its own.
    # Exit 5 (nothing selected, e.g. ``-k`` meant for tests/e2e) is not a failure.
    session.run("pytest", "tests/legacy", *session.posargs, success_codes=[0, 5])


@nox.session
def faults(session: nox.Session) -> None:
    """Fault-injection suite in the lab (root): 20 switchovers under load, then each fault."""
    session.run("pytest", "tests/faults", *session.posargs)


@nox.session
def protos(session: nox.Session) -> None:
    """Regenerate the betterproto2 code from protos/ and fail when the committed copy is stale."""
    session.run("python", "scripts/gen_protos.py")
    session.run("git", "diff", "--exit-code", "--", str(PROTO_OUT), external=True)
    untracked = session.run(
        "git",
        "ls-files",
        "--others",
        "--exclude-standard",
        str(PROTO_OUT),
        external=True,
        silent=True,
    )
    if untracked and str(untracked).strip():
        session.error(f"generated files not committed:\n{untracked}")


@nox.session
def build(session: nox.Session) -> None:
    """Build every wheel, then install each service alone in a fresh venv and run it."""
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run(
        "uv", "build", "--all-packages", "--no-sources", "--out-dir", str(dist), external=True
    )
    for service in SERVICES:
        module_wheel = service.replace("-", "_")
        if not list(dist.glob(f"{module_wheel}-*.whl")):
            session.error(f"no wheel built for {service}")
        with tempfile.TemporaryDirectory(prefix=f"pgcm-build-{service}-") as tmp:
            venv = Path(tmp) / "venv"
            session.run("uv", "venv", "--quiet", str(venv), external=True)
            env = {"VIRTUAL_ENV": str(venv)}
            # uv caches a find-links wheel by its path and name: without the refresh, a
            # second build on the same machine would install the first one's wheels.
            refresh = [arg for member in MEMBERS for arg in ("--refresh-package", member.name)]
            session.run(
                "uv",
                "pip",
                "install",
                "--quiet",
                *refresh,
                "--find-links",
                str(dist),
                service,
                external=True,
                env=env,
            )
            session.run(str(venv / "bin" / service), "--help", external=True, silent=True)
            if service != "pgcm-lab":
                session.run(str(venv / "bin" / service), "show-config", external=True, silent=True)


@nox.session
def deb(session: nox.Session) -> None:
    """Build the Debian packages into build/debs and test them in a clean Debian 12 root.

    Installs, checks files/owners/modes/users/--version/units (systemd-analyze verify),
    upgrades to a rebuild, removes and purges (tests/deb), and runs lintian. The root is
    debootstrapped once and cached under /var/cache/pgcm/debroot.
    """
    out = ROOT / "build" / "debs"
    shutil.rmtree(out, ignore_errors=True)
    session.run("python", "scripts/check_deps.py")
    session.run("python", "packaging/build_debs.py", str(out))
    session.run("pytest", "tests/deb", *session.posargs, env={"PGCM_DEBS": str(out)})


@nox.session
def compose(session: nox.Session) -> None:
    """compose/ end to end: build the .debs, then the images, up, checks, switchover, down.

    Starts a private dockerd (vfs storage, its own socket and state under /var/tmp,
    stopped and removed at the end, also on failure); ``debian:bookworm`` comes from a
    registry when one serves it, else from a debootstrap tarball cached in
    /var/cache/pgcm/docker. Skips only where no Docker engine can be had at all.
    """
    if os.geteuid() == 0 and shutil.which("dockerd") is None:
        session.run("apt-get", "install", "-y", "-q", "--no-install-recommends",
                    "docker.io", "debootstrap", external=True)  # fmt: skip
    out = ROOT / "build" / "debs"
    shutil.rmtree(out, ignore_errors=True)
    session.run("python", "packaging/build_debs.py", str(out))
    session.run("pytest", "libs/pgcm-lab/tests/compose", *session.posargs,
                env={"PGCM_DEBS": str(out)})  # fmt: skip


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: results go to benchmarks/results.{md,json} (never timed assertions)."""
    if os.geteuid() == 0 and shutil.which("go") is None:
        # bench_proxy's Go reference (benchmarks/go_reference/): Debian's Go toolchain and
        # etcd client sources; without them that one measurement is reported as skipped.
        session.run("apt-get", "install", "-y", "-q", "--no-install-recommends",
                    "golang-go", "golang-etcd-server-dev", external=True)  # fmt: skip
    env = {"PGCM_BENCH_OUT": os.environ.get("PGCM_BENCH_OUT", str(ROOT / "benchmarks"))}
    session.run("python", "benchmarks/run.py", *session.posargs, env=env)


@nox.session
def bench_original(session: nox.Session) -> None:
    """The original pgsql-cluster-manager beside pgcm in one legacy-agent lab (root).

    Needs a checkout of the original in ``PGCM_BENCH_ORIGINAL_SRC`` (without it the
    benchmark says so and is skipped) and Go; writes benchmarks/results/original.json.
    ``PGCM_BENCH_RUNS`` switchovers per tool (default 5).
    """
    if os.geteuid() == 0 and shutil.which("go") is None:
        session.run("apt-get", "install", "-y", "-q", "--no-install-recommends", "golang-go",
                    external=True)  # fmt: skip
    env = {"PGCM_BENCH_OUT": os.environ.get("PGCM_BENCH_OUT", str(ROOT / "benchmarks"))}
    session.run("python", "benchmarks/run.py", "original", *session.posargs, env=env)
