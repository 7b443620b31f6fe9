"""The admin view of a cluster (`GET /v1/cluster`): its nodes, the sessions each runs,
and how fresh each lease is."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from engine.store.base import Store


class SessionLease(BaseModel):
    """One session a node runs, and its lease."""

    session_id: str = Field(description="Public session id.")
    epoch: int = Field(ge=1, description="The lease's fencing number; every take-over raises it.")
    held_seconds: float | None = Field(
        None, description="Seconds since the node took the lease (absent: one process)."
    )
    expires_in_seconds: float | None = Field(
        None,
        description="Seconds until the lease expires unless renewed; negative once it has "
        "expired and waits for another node (absent: one process, no expiry).",
    )


class ClusterNode(BaseModel):
    """A node and the sessions it runs."""

    node_id: str = Field(description="The node's NODE_ID.")
    alive: bool = Field(description="Whether its heartbeat is current.")
    this_node: bool = Field(description="Whether it is the node that answered.")
    started_at: datetime | None = Field(
        None, description="When it joined the cluster (absent: one process)."
    )
    last_seen_seconds: float | None = Field(
        None, description="Seconds since its last heartbeat (absent: one process)."
    )
    session_count: int = Field(ge=0, description="How many live sessions it holds a lease on.")
    sessions: list[SessionLease] = Field(description="Those sessions, with their leases.")


class ClusterView(BaseModel):
    """The nodes of the cluster and the sessions each runs."""

    node_id: str = Field(description="The node that answered.")
    mode: Literal["single", "cluster"] = Field(
        description="`single`: one process runs every session; `cluster`: nodes share "
        "the sessions under leases."
    )
    lease_seconds: float = Field(description="LEASE_SECONDS of the node that answered.")
    nodes: list[ClusterNode] = Field(
        description="Every known node (and any that still holds a lease), by NODE_ID."
    )


async def cluster_view(store: Store, *, lease_seconds: float) -> ClusterView:
    """What the store knows of the nodes and their leases, grouped by node."""
    snapshot = await store.cluster_snapshot()
    nodes = {node.node_id: node for node in snapshot.nodes}
    sessions: dict[str, list[SessionLease]] = {node_id: [] for node_id in nodes}
    for lease in snapshot.leases:
        sessions.setdefault(lease.node_id, []).append(
            SessionLease(
                session_id=lease.session_id,
                epoch=lease.epoch,
                held_seconds=lease.held_seconds,
                expires_in_seconds=lease.expires_in_seconds,
            )
        )
    listed = []
    for node_id in sorted(sessions):
        known = nodes.get(node_id)
        listed.append(
            ClusterNode(
                node_id=node_id,
                # A lease holder missing from the registry was forgotten: it is long gone.
                alive=known.alive if known is not None else False,
                this_node=node_id == store.node_id,
                started_at=known.started_at if known is not None else None,
                last_seen_seconds=known.last_seen_seconds if known is not None else None,
                session_count=len(sessions[node_id]),
                sessions=sessions[node_id],
            )
        )
    return ClusterView(
        node_id=store.node_id,
        mode="single" if store.fencing is None else "cluster",
        lease_seconds=lease_seconds,
        nodes=listed,
    )
