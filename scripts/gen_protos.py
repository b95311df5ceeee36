"""Regenerate pgcm_common.proto from protos/*.proto with betterproto2.

Run from anywhere with ``uv run python scripts/gen_protos.py``. The output is
deterministic (same compiler, same ruff, same input -> same bytes), so the nox ``protos``
session can regenerate and then ``git diff --exit-code`` to catch a stale copy.

How: grpcio-tools' bundled ``protoc`` (which also ships the well-known types such as
``google/protobuf/timestamp.proto``) drives the ``protoc-gen-python_betterproto2`` plugin
from betterproto2-compiler, asking for an async grpclib client stub and an async server
base. The plugin formats its output by running ``ruff`` found on ``PATH`` from the
current directory, so we run it from the repository root (the root ruff settings then
apply) with the venv's ``bin`` first on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
PROTOS = ["failover.proto", "etcdserverpb.proto"]
OUT = ROOT / "libs" / "pgcm-common" / "src" / "pgcm_common" / "proto"
# Async grpclib client stubs and server bases only: every caller is asyncio.
PLUGIN_OPTIONS = "client_generation=async,server_generation=async"


def main() -> int:
    """Generate into a temporary directory, then replace ``OUT`` with its contents."""
    bindir = Path(sys.executable).parent
    plugin = bindir / "protoc-gen-python_betterproto2"
    if not plugin.exists():
        print(f"missing {plugin}: run `uv sync --all-packages` first", file=sys.stderr)
        return 1
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    with tempfile.TemporaryDirectory(prefix="pgcm-protos-") as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"--proto_path={PROTO_DIR}",
                f"--plugin=protoc-gen-python_betterproto2={plugin}",
                f"--python_betterproto2_out={tmp}",
                f"--python_betterproto2_opt={PLUGIN_OPTIONS}",
                *PROTOS,
            ],
            check=True,
            cwd=ROOT,
            env=env,
        )
        if OUT.exists():
            shutil.rmtree(OUT)
        shutil.copytree(tmp, OUT)
    # TemporaryDirectory is 0700 and copytree copies directory modes: give the generated
    # package the modes the rest of the checkout has, so that a service account (the
    # systemd tests run supervise as hacluster from the checkout) can import it.
    for directory in (OUT, *(p for p in OUT.rglob("*") if p.is_dir())):
        directory.chmod(0o755)
    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
