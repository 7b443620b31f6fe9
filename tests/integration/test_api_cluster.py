"""`GET /v1/cluster`: the admin view of nodes and their sessions, behind CLUSTER_ADMIN_TOKEN.

401 `cluster_token` (with `WWW-Authenticate: Bearer`) without the right Bearer token;
off (404, like an unknown route) to a Bearer token when the server has none; one
process answers itself as the only node with every live session. The view of real
leases on PostgreSQL is in tests/integration/test_cluster_leases.py.
"""

from __future__ import annotations

import httpx

from tests.integration.conftest import ServerFactory, create_session
from tests.support.engine import WAIT_SECONDS

ADMIN = "admin-token-0123456789abcdef"


async def test_the_cluster_route_is_off_without_an_admin_token(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as client:
        answer = await client.get("/v1/cluster", headers={"Authorization": "Bearer anything"})
        assert answer.status_code == 404
        assert answer.json()["code"] == "not_found"
        # Without any credential: 401, whether the route is on or off.
        answer = await client.get("/v1/cluster")
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer"


async def test_a_missing_or_wrong_admin_token_is_refused_without_echoing_it(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(cluster_admin_token=ADMIN)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {ADMIN}x"},
            {"Authorization": f"Basic {ADMIN}"},
            {"Authorization": ADMIN},
        ):
            answer = await client.get("/v1/cluster", headers=headers)
            assert answer.status_code == 401, headers
            assert answer.headers["WWW-Authenticate"] == "Bearer"
            assert answer.json()["code"] == "cluster_token"
            assert ADMIN not in answer.text


async def test_one_process_answers_itself_with_every_live_session(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(cluster_admin_token=ADMIN, node_id="solo", lease_seconds=2.5)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_SECONDS) as client:
        live = await create_session(client, participation="reactive")
        ended = await create_session(client, participation="reactive")
        assert (await client.delete(f"/v1/session/{ended['token']}")).status_code == 200
        answer = await client.get("/v1/cluster", headers={"Authorization": f"bearer {ADMIN}"})
    assert answer.status_code == 200, answer.text
    view = answer.json()
    assert view["mode"] == "single" and view["lease_seconds"] == 2.5
    (node,) = view["nodes"]
    assert view["node_id"] == node["node_id"] == "solo"
    assert node["alive"] and node["this_node"]
    assert node["session_count"] == 1
    assert [s["session_id"] for s in node["sessions"]] == [live["id"]]
    assert node["sessions"][0]["epoch"] == 1
