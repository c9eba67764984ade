"""Replay: a new job copied from an old one, with overrides and `replay_of`."""

from collections.abc import Callable

import pytest

from services.cli.client import ApiError, GatewayClient

from .conftest import Cluster, events_of, submit, wait_finished


async def test_replay_records_overrides(
    cluster: Cluster, client: GatewayClient, nap_repo: Callable[[str], str]
) -> None:
    await cluster.start_scheduler()
    await cluster.add_executor("ex-one", slots=1, labels=("docker",))
    repo = nap_repo("nap")
    old = await submit(
        client, repo, priority=3, labels=["docker"], concurrency_group="g"
    )
    old_run = await wait_finished(client, old)
    # The replays need not run: the overridden commit does not exist.
    for executor in cluster.executors:
        await executor.stop()
    cluster.executors.clear()

    plain = await client.request("POST", f"/api/v1/jobs/{old}/replay")
    overridden = await client.request(
        "POST",
        f"/api/v1/jobs/{old}/replay",
        json={
            "branch": "release",
            "commit": "0123456789abcdef",
            "env": {"EXTRA": "1"},
            "image": "debian:bookworm",
            "steps": ["nap"],
        },
    )
    plain_submitted = (await events_of(client, plain["job_id"]))[0]
    submitted = (await events_of(client, overridden["job_id"]))[0]

    assert plain["status"] == "submitted"
    assert plain["job_id"] != old
    assert plain_submitted["replay_of"] == old
    assert plain_submitted["repository"]["commit"] == old_run["commit"]
    assert plain_submitted["env"] == {"NAP": "0"}
    assert plain_submitted["only_steps"] is None
    assert plain_submitted["priority"] == 3
    assert plain_submitted["labels"] == ["docker"]
    assert plain_submitted["concurrency_group"] == "g"
    assert submitted["replay_of"] == old
    assert submitted["repository"]["url"] == repo
    assert submitted["repository"]["branch"] == "release"
    assert submitted["repository"]["commit"] == "0123456789abcdef"
    assert submitted["env"] == {"NAP": "0", "EXTRA": "1"}
    assert submitted["image"] == "debian:bookworm"
    assert submitted["only_steps"] == ["nap"]


async def test_replay_rejects_bad_overrides(
    cluster: Cluster, client: GatewayClient, nap_repo: Callable[[str], str]
) -> None:
    old = await submit(client, nap_repo("nap"))
    with pytest.raises(ApiError) as bad_step:
        await client.request(
            "POST", f"/api/v1/jobs/{old}/replay", json={"steps": ["a b"]}
        )
    with pytest.raises(ApiError) as bad_ref:
        await client.request(
            "POST", f"/api/v1/jobs/{old}/replay", json={"branch": "a..b"}
        )
    with pytest.raises(ApiError) as unknown:
        await client.request("POST", "/api/v1/jobs/01NOSUCHJOB/replay")
    assert bad_step.value.status == 422
    assert "'a b'" in bad_step.value.detail
    assert bad_ref.value.status == 422
    assert "'a..b'" in bad_ref.value.detail
    assert unknown.value.status == 404
