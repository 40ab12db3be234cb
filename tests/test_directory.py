"""The coordinator's peer registry and public-key directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from p2pfed.errors import ProtocolError
from p2pfed.runtime.directory import Directory, Placement


def test_registry_places_peers_and_forgets_a_dead_host() -> None:
    d = Directory()
    for peer in range(4):
        d.register(peer, host=peer // 2, node="n0")
    assert d.placement(3) == Placement(1, "n0")
    assert d.unregister_host(0) == [0, 1]
    assert d.peers() == [2, 3]
    with pytest.raises(ProtocolError, match="not registered"):
        d.placement(0)


def test_keys_bind_fail_closed() -> None:
    d = Directory()
    d.register(1, host=0)
    with pytest.raises(ProtocolError, match="not registered"):
        d.publish(2, "x25519", b"k")  # an unknown peer cannot publish
    d.publish(1, "x25519", b"key-a")
    d.publish(1, "x25519", b"key-a")  # the same publication again is fine
    with pytest.raises(ProtocolError, match="later epoch"):
        d.publish(1, "x25519", b"key-b")  # no silent swap at the same epoch
    assert d.lookup(1, "x25519").key == b"key-a"
    d.publish(1, "x25519", b"key-b", epoch=1)  # rotation
    assert d.lookup(1, "x25519").key == b"key-b"
    with pytest.raises(ProtocolError, match="later epoch"):
        d.publish(1, "x25519", b"key-c", epoch=0)  # no rollback
    with pytest.raises(ProtocolError, match="no ed25519 key"):
        d.lookup(1, "ed25519")
    with pytest.raises(ProtocolError, match="non-empty"):
        d.publish(1, "ed25519", b"")
    assert set(d.keys("x25519")) == {1}


@pytest.mark.ray
def test_the_coordinator_host_keeps_the_registry(ray_local: Any, tmp_path: Path) -> None:
    from p2pfed.config import config_from_mapping
    from p2pfed.experiment import build_world
    from p2pfed.runtime.ray_runtime import RayRuntime
    from tests.conftest import small_config

    cfg = config_from_mapping(
        small_config(
            protocol={"kind": "fedavg", "rounds": 2},
            runtime={"kind": "ray", "hosts": 2, "cpus_per_host": 0.5},
        )
    )
    rt = RayRuntime(build_world(cfg))
    try:
        coord = rt.coordinator.actor
        registry = ray_local.get(coord.registry.remote())
        assert sorted(registry) == list(range(7))  # 6 clients + the coordinator
        assert {registry[p].host for p in range(3)} == {0} and registry[6].host == 2
        ray_local.get(coord.publish_key.remote(3, "x25519", b"pk3"))
        assert ray_local.get(coord.lookup_key.remote(3, "x25519")).key == b"pk3"
        with pytest.raises(ray_local.exceptions.RayTaskError, match="does not carry"):
            ray_local.get(rt.hosts[0].actor.registry.remote())
    finally:
        rt.close()
