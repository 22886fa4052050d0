"""`cos send`, `cos get`, `cos events` and `cos state` as an operator runs them: subprocesses against a
real node and the real bank handler, whose gRPC server reflection supplies the descriptors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from google.protobuf.descriptor_pb2 import FileDescriptorProto, FileDescriptorSet

from chiefofstate.cli.processes import free_port
from tests.integration.conftest import NodeFactory

pytestmark = pytest.mark.integration
sqlite_only = pytest.mark.parametrize("store_env", ["sqlite"], indirect=True)


def cos(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Output to a pipe, as in a script: nothing may be cut to a terminal's width."""
    return subprocess.run(
        [sys.executable, "-m", "chiefofstate", *args],
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("store_env", ["sqlite", "postgres"], indirect=True)
def test_send_then_get_events_and_state_show_decoded_json(node_factory: NodeFactory) -> None:
    node = node_factory(COS_WRITE_PERSISTED_HEADERS="x-user")
    opened = json.loads(
        ok(
            cos(
                "send",
                "acct-1",
                "bank.v1.OpenAccount",
                '{"owner": "Vi", "initialBalance": "1000"}',
                "--header",
                "x-user=vi",
                "--json",
                env=node.env,
            )
        )
    )
    assert opened["revision"] == 1
    assert opened["state"] == {
        "type": "type.googleapis.com/bank.v1.BankAccount",
        "json": {"accountId": "acct-1", "owner": "Vi", "balance": "1000"},
    }
    table = ok(cos("send", "acct-1", "bank.v1.Deposit", '{"amount": "250"}', env=node.env))
    assert "revision 2" in table and '"balance": "1250"' in table

    got = json.loads(ok(cos("get", "acct-1", "--json", env=node.env)))
    assert got["revision"] == 2 and got["state"]["json"]["balance"] == "1250"

    listed = json.loads(ok(cos("events", "acct-1", "--json", env=node.env)))
    assert [event["event"]["type"] for event in listed["events"]] == [
        "type.googleapis.com/bank.v1.AccountOpened",
        "type.googleapis.com/bank.v1.MoneyDeposited",
    ]
    assert listed["events"][1]["event"]["json"] == {"amount": "250"}
    assert listed["events"][0]["headers"] == [{"key": "x-user", "string_value": "vi"}]
    assert {"revision", "revision_date", "deleted", "ordering", "shard"} <= set(listed["events"][0])

    # A pipe is not a terminal: the full type names and decoded events are there, however wide.
    text = ok(cos("events", "acct-1", env=node.env))
    assert "type.googleapis.com/bank.v1.MoneyDeposited" in text and '{"amount": "250"}' in text
    assert "…" not in text

    state = json.loads(ok(cos("state", "acct-1", "--json", env=node.env)))
    assert state["state"]["json"] == {"accountId": "acct-1", "owner": "Vi", "balance": "1250"}
    assert state["read_from"] == {"kind": "event", "sequence_number": 2}
    assert '"balance": "1250"' in ok(cos("state", "acct-1", env=node.env))


@sqlite_only
def test_a_descriptor_set_file_decodes_without_reflection(node_factory: NodeFactory, tmp_path: Path) -> None:
    node = node_factory()
    ok(cos("send", "acct-2", "bank.v1.OpenAccount", '{"owner": "Al"}', env=node.env))
    descriptor_set = FileDescriptorSet()
    proto = FileDescriptorProto()
    bank_pb2.DESCRIPTOR.CopyToProto(proto)
    descriptor_set.file.append(proto)  # without its imports: they come from the CLI's own runtime
    path = tmp_path / "bank.pb"
    path.write_bytes(descriptor_set.SerializeToString())
    # No handler to ask: the file alone must do.
    env = {k: v for k, v in node.env.items() if not k.startswith("COS_WRITE_SIDE_")}
    state = json.loads(ok(cos("state", "acct-2", "--json", "--descriptors", str(path), env=env)))
    assert state["state"]["json"] == {"accountId": "acct-2", "owner": "Al"}
    undecoded = json.loads(ok(cos("state", "acct-2", "--json", env=env)))
    assert undecoded["state"]["json"] is None and undecoded["state"]["base64"]
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\xff\xff not a descriptor set")
    refused = cos("state", "acct-2", "--descriptors", str(garbage), env=env)
    assert refused.returncode == 1
    assert str(garbage) in refused.stderr and "FileDescriptorSet" in refused.stderr


@sqlite_only
def test_events_follow_tails_new_events_as_json_lines(node_factory: NodeFactory, tmp_path: Path) -> None:
    node = node_factory(COS_SUBSCRIPTION_ENABLED="true")
    ok(cos("send", "acct-3", "bank.v1.OpenAccount", '{"owner": "Jo"}', env=node.env))
    err_path = tmp_path / "follow.err"
    with err_path.open("w") as err:
        follower = subprocess.Popen(
            [sys.executable, "-m", "chiefofstate", "events", "--follow", "acct-3", "--json", "--count", "2"],
            env=node.env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "following events of acct-3" not in err_path.read_text():
            assert follower.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, "the follower never said it was subscribed"
            time.sleep(0.05)
        ok(cos("send", "acct-3", "bank.v1.Deposit", '{"amount": "7"}', env=node.env))
        ok(cos("send", "other", "bank.v1.OpenAccount", '{"owner": "X"}', env=node.env))
        ok(cos("send", "acct-3", "bank.v1.Withdraw", '{"amount": "2"}', env=node.env))
        out, _ = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, err_path.read_text()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["revision"] for line in lines] == [2, 3]  # the other entity's event is not among them
    assert lines[0]["event"]["json"] == {"amount": "7"}
    assert lines[1]["resulting_state"]["json"]["balance"] == "5"


@sqlite_only
def test_follow_needs_subscriptions_and_says_so(node_factory: NodeFactory) -> None:
    node = node_factory()
    refused = cos("events", "--follow", "--all", env=node.env)
    assert refused.returncode == 1 and "UNIMPLEMENTED" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@sqlite_only
def test_send_and_get_refusals_are_one_line(node_factory: NodeFactory) -> None:
    node = node_factory()
    unknown = cos("send", "a", "bank.v1.NoSuchCommand", "{}", env=node.env)
    assert unknown.returncode == 1 and "bank.v1.NoSuchCommand is not a message type" in unknown.stderr
    bad_json = cos("send", "a", "bank.v1.Deposit", '{"amount": "lots"}', env=node.env)
    assert bad_json.returncode == 1 and "amount" in bad_json.stderr
    refused = cos("send", "nobody", "bank.v1.Deposit", '{"amount": "5"}', env=node.env)
    assert refused.returncode == 1 and refused.stderr.startswith("error: NOT_FOUND")
    missing = cos("get", "nobody", "--json", env=node.env)
    assert missing.returncode == 1 and json.loads(missing.stdout) == {"entity_id": "nobody", "state": None}
    no_node = cos("get", "a", "--port", str(free_port()), env=node.env)
    assert no_node.returncode == 1
    for result in (unknown, bad_json, refused, no_node):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    no_handler = cos("send", "a", "bank.v1.Deposit", "{}", "--handler", "127.0.0.1:1", env=node.env)
    assert no_handler.returncode == 1 and "127.0.0.1:1" in no_handler.stderr


def test_reading_commands_name_a_missing_database_and_create_nothing(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("COS_")}
    env["COS_DB_PATH"] = str(tmp_path / "missing.db")
    for command in (["events", "x"], ["state", "x"]):
        result = cos(*command, env=env)
        assert result.returncode == 1
        assert str(tmp_path / "missing.db") in result.stderr and "COS_DB_PATH" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


def _at_a_terminal(args: list[str], answer: str, env: dict[str, str]) -> tuple[int, str]:
    """Runs `cos` with a pseudo-terminal as stdin and stdout, types `answer`, returns (exit, output)."""
    import pty

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "chiefofstate", *args],
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    output = b""
    try:
        while b"?" not in output:  # the question, then the answer
            output += os.read(controller, 4096)
        os.write(controller, answer.encode() + b"\n")
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the process closed the terminal
                break
            if not chunk:
                break
            output += chunk
        return process.wait(timeout=60), output.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)


def test_restart_and_skip_ask_at_a_terminal_and_a_no_does_nothing() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("COS_")}
    nowhere = ["--port", str(free_port()), "--timeout", "3"]
    code, output = _at_a_terminal(["readside", "restart", "ledger", *nowhere], "n", env)
    assert code == 1 and "replay every event" in output and "nothing done" in output
    assert "UNAVAILABLE" not in output  # the node was never called
    code, output = _at_a_terminal(["readside", "skip", "ledger", "--shard", "2", *nowhere], "y", env)
    assert "shard 2" in output and "UNAVAILABLE" in output and code == 1  # a yes goes on to call the node


def test_shell_completion_is_offered() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("COS_")}
    script = ok(cos("--show-completion", "bash", env=env))
    assert "_COS_COMPLETE" in script
    assert ok(cos("--version", env=env)).startswith("cos ")
