"""Read Pacemaker's view of the cluster: ``crm_mon`` XML as a typed, immutable state.

Usage::

    reader = CrmMon(CrmMonOptions(resource_id="pgsqld"))
    with anyio.fail_after(5):
        state = await reader.read_cluster_state()
    match state.primary:
        case SinglePrimary(node=node):
            ...
        case NoQuorum() | NoPrimary() | SeveralPrimaries() | InTransition():
            ...  # ambiguity is explicit; never guess a primary

Errors are all :class:`~pgcm_common.errors.PacemakerError`::

    PacemakerError
    ├── CrmMonParseError           crm_mon printed something we cannot trust
    ├── PromotableResourceNotFound the resource is not in a promotable clone
    ├── PacemakerCommandFailed     crm_mon / corosync-cfgtool could not run or exited non-zero
    └── NodeAddressUnknown         no address for a node
"""

from __future__ import annotations

from pgcm_common._pacemaker.address import (
    CorosyncNodeAddresses,
    NodeAddressResolver,
    StaticNodeAddresses,
    parse_cfgtool_addresses,
)
from pgcm_common._pacemaker.errors import (
    CrmMonParseError,
    NodeAddressUnknown,
    PacemakerCommandFailed,
    PromotableResourceNotFound,
)
from pgcm_common._pacemaker.model import (
    SCORE_INFINITY,
    Ban,
    ClusterState,
    Failure,
    FenceAction,
    FenceStatus,
    InTransition,
    LegacyPgsqlAttributes,
    Node,
    NodeAttributes,
    NoPrimary,
    NoQuorum,
    OutputFormat,
    PgsqlDataStatus,
    PgsqlStatus,
    PrimaryObservation,
    PromotionScore,
    ResourceInstance,
    Role,
    SeveralPrimaries,
    SinglePrimary,
)
from pgcm_common._pacemaker.parse import crm_mon_failure_detail, parse_crm_mon, parse_score
from pgcm_common._pacemaker.reader import (
    CommandOutput,
    CrmMon,
    CrmMonDialect,
    CrmMonOptions,
    CrmMonReader,
    read_cluster_state,
    run_command,
)
from pgcm_common.errors import PacemakerError

__all__ = [
    "SCORE_INFINITY",
    "Ban",
    "ClusterState",
    "CommandOutput",
    "CorosyncNodeAddresses",
    "CrmMon",
    "CrmMonDialect",
    "CrmMonOptions",
    "CrmMonParseError",
    "CrmMonReader",
    "Failure",
    "FenceAction",
    "FenceStatus",
    "InTransition",
    "LegacyPgsqlAttributes",
    "NoPrimary",
    "NoQuorum",
    "Node",
    "NodeAddressResolver",
    "NodeAddressUnknown",
    "NodeAttributes",
    "OutputFormat",
    "PacemakerCommandFailed",
    "PacemakerError",
    "PgsqlDataStatus",
    "PgsqlStatus",
    "PrimaryObservation",
    "PromotableResourceNotFound",
    "PromotionScore",
    "ResourceInstance",
    "Role",
    "SeveralPrimaries",
    "SinglePrimary",
    "StaticNodeAddresses",
    "crm_mon_failure_detail",
    "parse_cfgtool_addresses",
    "parse_crm_mon",
    "parse_score",
    "read_cluster_state",
    "run_command",
]
