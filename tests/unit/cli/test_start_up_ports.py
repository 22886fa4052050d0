"""The ports `cos serve` checks before the node opens anything: one clash or one taken port is a
ConfigError naming the variable."""

from __future__ import annotations

import socket

import pytest

from chiefofstate.cli.port_check import check_free
from chiefofstate.cli.processes import free_port
from chiefofstate.config.ports import Listener, check_distinct_ports, listeners
from chiefofstate.config.settings import load_settings
from chiefofstate.core.errors import ConfigError

BASE = {"COS_WRITE_SIDE_HOST": "127.0.0.1", "COS_WRITE_SIDE_PORT": "50051"}


def test_every_server_the_protocol_starts_is_listed_with_its_variable() -> None:
    settings = load_settings({**BASE, "COS_SERVER_PROTOCOL": "both"})
    assert [listener.variable for listener in listeners(settings)] == [
        "COS_MANAGEMENT_PORT",
        "COS_PROMETHEUS_PORT",
        "COS_PORT",
        "COS_HTTP_PORT",
    ]
    grpc_only = load_settings(BASE)
    assert "COS_HTTP_PORT" not in [listener.variable for listener in listeners(grpc_only)]


def test_two_settings_on_one_port_name_both() -> None:
    settings = load_settings({**BASE, "COS_PORT": "9500", "COS_PROMETHEUS_PORT": "9500"})
    with pytest.raises(ConfigError) as refused:
        check_distinct_ports(listeners(settings))
    assert refused.value.variable == "COS_PORT"
    assert "9500" in str(refused.value) and "COS_PROMETHEUS_PORT" in str(refused.value)


def test_one_port_on_two_specific_addresses_or_port_zero_is_no_clash() -> None:
    check_distinct_ports(
        [
            Listener("COS_PORT", "127.0.0.1", 9500, True, "COS_ADDRESS"),
            Listener("COS_MANAGEMENT_PORT", "127.0.0.2", 9500, True, "COS_MANAGEMENT_ADDRESS"),
            Listener("COS_HTTP_PORT", "0.0.0.0", 0, True, "COS_HTTP_ADDRESS"),
            Listener("COS_PROMETHEUS_PORT", "0.0.0.0", 0, False, "COS_PROMETHEUS_ADDRESS"),
        ]
    )


def test_a_port_held_by_a_listening_socket_is_named_with_its_variable() -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        taken = [Listener("COS_HTTP_PORT", "127.0.0.1", port, True, "COS_HTTP_ADDRESS")]
        with pytest.raises(ConfigError) as refused:
            check_free(taken)
        assert refused.value.variable == "COS_HTTP_PORT" and f"port {port}" in str(refused.value)
        check_free(taken, skip_shared=True)  # a worker's sibling holds it on purpose
    check_free(taken)  # released: free again


def test_an_address_not_of_this_machine_names_the_address_variable() -> None:
    with pytest.raises(ConfigError) as refused:
        check_free([Listener("COS_PORT", "192.0.2.1", free_port(), True, "COS_ADDRESS")])
    assert refused.value.variable == "COS_ADDRESS"
