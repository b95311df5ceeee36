"""P5: the Debian packages as installed: size per package, --help and --version time.

Builds the three .debs (``packaging/build_debs.py``), installs them with dpkg into a
copy-on-write Debian 12 root (the cached debootstrap root of ``tests/deb``), and times
each command there, as an operator runs it: ``--help`` (the bare page the package
renders at build time) and ``--version``, median and max of ``RUNS`` runs after one
warm-up. Installed size is the control file's ``Installed-Size`` and what ``du`` sees
under the package's venv after the postinst compiled its bytecode. Numbers only: no
assertion on any of them (the target for ``--help`` is under 0.3 s).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.deb.conftest import DebianRoot, _new_root, build_debs  # noqa: E402

DESCRIPTION = (
    "P5: installed size of each .deb, and --help/--version wall time of each command as "
    "installed (median/max of 7 runs, Debian 12 root)."
)
PACKAGES = ("pgcm-supervise", "pgcm-proxy", "pgcm-failover")
RUNS = 7
_TIMER = (
    "import subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)\n"
    "print(time.perf_counter() - t)\n"
)


def _times(root: DebianRoot, argv: str) -> dict[str, float]:
    script = "\n".join([f"python3 -c '{_TIMER}' {argv}"] * (RUNS + 1))
    runs = [float(line) for line in root.out(script).split()][1:]  # the first one warms up
    return {"median_s": round(statistics.median(runs), 3), "max_s": round(max(runs), 3)}


def run() -> dict[str, object]:
    """Build, install, measure; return the numbers per package."""
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="pgcm-bench-p5-") as tmp:
        debs = Path(tmp) / "debs"
        build_debs(debs, "1")
        (Path(tmp) / "root").mkdir()
        with _new_root(debs, Path(tmp) / "root") as root:
            root.run("dpkg -i /debs/*.deb >/dev/null")
            for package in PACKAGES:
                size = root.out(f"dpkg-query -W -f='${{Installed-Size}}' {package}")
                du = root.out(f"du -sk /usr/lib/{package}").split()[0]
                results[package] = {
                    "deb_bytes": next(debs.glob(f"{package}_*.deb")).stat().st_size,
                    "installed_size_kib": int(size),
                    "venv_with_bytecode_kib": int(du),
                    "help": _times(root, f"{package} --help"),
                    "version": _times(root, f"{package} --version"),
                }
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
