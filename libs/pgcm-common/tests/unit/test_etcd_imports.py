"""The etcd client and the wire contract carry no gRPC runtime (ADR 0006)."""

from __future__ import annotations

import subprocess
import sys


def test_the_etcd_client_and_the_wire_contract_import_no_grpcio_aetcd_or_protobuf() -> None:
    # A fresh interpreter: this test process may have imported grpc for other tests.
    probe = (
        "import sys, pgcm_common.etcd, pgcm_common.proto.failover; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'grpc', 'aetcd'} "
        "or m.startswith('google.protobuf')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
