"""Routes as the data plane reads them: weights, sticky keys, the default, the shadow, and a
version taken out of them."""

from __future__ import annotations

import zlib
from collections import Counter

import pytest

from torchferry.errors import InvalidInput
from torchferry.serving.lifecycle.state import Routes, Shadow
from torchferry.serving.protocols.common import traffic_key
from torchferry.serving.routing import Route


def test_no_weights_picks_the_default_or_none():
    assert Route.of(Routes()).pick("k") is None
    assert Route.of(Routes(default=2)).pick(None) == 2


def test_weights_split_traffic_in_proportion():
    route = Route.of(Routes(weights={1: 90, 2: 10}))
    picks = Counter(route.pick(None) for _ in range(20_000))
    assert set(picks) == {1, 2}
    assert 0.08 < picks[2] / 20_000 < 0.12


def test_a_key_always_picks_the_same_version_by_crc32_over_ascending_versions():
    route = Route.of(Routes(weights={2: 30, 1: 70}))  # order of the dict does not matter
    for key in ("alice", "bob", "carol", "dave", "eve"):
        point = zlib.crc32(key.encode()) % 100
        expected = 1 if point < 70 else 2
        assert {route.pick(key) for _ in range(50)} == {expected}
    # every version gets some keys
    assert {route.pick(f"user-{i}") for i in range(200)} == {1, 2}


def test_zero_weights_take_no_traffic_and_weights_win_over_the_default():
    route = Route.of(Routes(default=1, weights={1: 0, 3: 100}))
    assert {route.pick(None) for _ in range(100)} == {3}
    assert route.named() == {1, 3}


def test_a_version_taken_out_leaves_weights_default_and_shadow():
    routes = Routes(default=2, weights={1: 50, 2: 50}, shadow=Shadow(version=2, share=0.5))
    left = routes.without(2)
    assert left == Routes(default=None, weights={1: 50}, shadow=None)
    assert Routes(weights={2: 100}).without(2).weights == {}
    kept = routes.without(1)
    assert kept.default == 2 and kept.weights == {2: 50} and kept.shadow is not None


def test_traffic_key_rule_parameter_over_header():
    assert traffic_key(None) is None
    assert traffic_key("") is None
    assert traffic_key("h") == "h"
    assert traffic_key("h", "p") == "p"
    assert traffic_key("h", 42) == "42"
    with pytest.raises(InvalidInput, match="traffic_key"):
        traffic_key("h", [1])
    with pytest.raises(InvalidInput, match="traffic_key"):
        traffic_key(None, True)
