"""The ``[cluster]`` table: where one cluster's state lives in etcd."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, final

from pydantic import BaseModel, ConfigDict, Field

from pgcm_common.records import KeyLayout

__all__ = ["ClusterSettings"]


@final
class ClusterSettings(BaseModel):
    """Where one cluster's state lives in etcd; the same for every service of a cluster.

    The TOML table is ``[cluster]``; environment variables ``PGCM_CLUSTER__NAMESPACE``
    and ``PGCM_CLUSTER__MASTER_KEY`` (the original's ``PGCM_ETCD_NAMESPACE`` and
    ``PGCM_ETCD_POSTGRES_MASTER_KEY`` work too).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The original's spellings (flags, PGCM_ env, TOML) -> field; every service that
    # composes this table accepts them (see original_keys_of).
    original_keys: ClassVar[Mapping[str, str]] = {
        "etcd-namespace": "namespace",
        "etcd-postgres-master-key": "master_key",
        "postgres-master-etcd-key": "master_key",
    }

    namespace: str = Field(
        default="",
        description="Prefix of every etcd key pgcm reads or writes (the original's "
        "playground used '/postgres').",
    )
    master_key: str = Field(
        default="/master",
        description="Key under the namespace that holds the primary's bare address.",
    )

    @property
    def master_path(self) -> str:
        """The full etcd key of the primary's address: namespace + master key."""
        return self.layout.master.decode()

    @property
    def layout(self) -> KeyLayout:
        """Every etcd key of this cluster (pgcm_common.records documents them)."""
        return KeyLayout(self.namespace, self.master_key)
