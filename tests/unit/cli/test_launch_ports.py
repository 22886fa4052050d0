import socket

import pytest

from chiefofstate.cli import processes as launch


def free_block(size: int) -> range:
    """`size` consecutive ports that are free now."""
    for start in range(28000, 31000, size):
        block = range(start, start + size)
        try:
            for port in block:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return block
    raise RuntimeError("no free block of ports")


def test_a_node_gets_a_distinct_port_for_each_server_even_from_a_tiny_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(launch, "_CHOSEN_PORTS", free_block(4))  # four servers, four ports to draw from
    for _ in range(50):
        env = launch.node_environment({})
        ports = [
            env[name] for name in ("COS_PORT", "COS_MANAGEMENT_PORT", "COS_HTTP_PORT", "COS_PROMETHEUS_PORT")
        ]
        assert len(set(ports)) == 4


def test_a_port_given_by_the_caller_is_kept_and_not_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    block = free_block(4)
    monkeypatch.setattr(launch, "_CHOSEN_PORTS", block)
    for _ in range(20):
        env = launch.node_environment({}, COS_PORT=str(block[0]))
        assert env["COS_PORT"] == str(block[0])
        assert str(block[0]) not in (
            env["COS_MANAGEMENT_PORT"],
            env["COS_HTTP_PORT"],
            env["COS_PROMETHEUS_PORT"],
        )
