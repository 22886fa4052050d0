"""The wire contract: names, field numbers and types exactly as docs/contract.md §2, and fresh generated
code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from chiefofstate.gen.chief_of_state.v1 import (
    common_pb2,
    manager_pb2,
    persistence_pb2,
    readside_pb2,
    service_pb2,
    writeside_pb2,
)

ROOT = Path(__file__).resolve().parents[3]
T = FieldDescriptor

# (message, {field name: (number, type, repeated)}) straight from docs/contract.md §2
EXPECTED = {
    common_pb2.MetaData: {
        "entity_id": (1, T.TYPE_STRING, False),
        "revision_number": (2, T.TYPE_UINT32, False),
        "revision_date": (3, T.TYPE_MESSAGE, False),
        "data": (4, T.TYPE_MESSAGE, True),
        "headers": (5, T.TYPE_MESSAGE, True),
    },
    common_pb2.Header: {
        "key": (1, T.TYPE_STRING, False),
        "string_value": (2, T.TYPE_STRING, False),
        "bytes_value": (3, T.TYPE_BYTES, False),
    },
    common_pb2.ReadSideOffset: {
        "cluster_shard_number": (1, T.TYPE_UINT64, False),
        "offset": (2, T.TYPE_UINT64, False),
    },
    service_pb2.ProcessCommandRequest: {
        "entity_id": (1, T.TYPE_STRING, False),
        "command": (2, T.TYPE_MESSAGE, False),
    },
    service_pb2.ProcessCommandResponse: {
        "state": (1, T.TYPE_MESSAGE, False),
        "meta": (2, T.TYPE_MESSAGE, False),
    },
    service_pb2.GetStateRequest: {"entity_id": (1, T.TYPE_STRING, False)},
    service_pb2.GetStateResponse: {"state": (1, T.TYPE_MESSAGE, False), "meta": (2, T.TYPE_MESSAGE, False)},
    service_pb2.SubscribeRequest: {
        "entity_id": (1, T.TYPE_STRING, False),
        "subscription_id": (2, T.TYPE_STRING, False),
    },
    service_pb2.SubscribeResponse: {
        "subscription_id": (1, T.TYPE_STRING, False),
        "event": (2, T.TYPE_MESSAGE, False),
        "resulting_state": (3, T.TYPE_MESSAGE, False),
        "meta": (4, T.TYPE_MESSAGE, False),
    },
    service_pb2.SubscribeAllRequest: {"subscription_id": (1, T.TYPE_STRING, False)},
    service_pb2.UnsubscribeRequest: {"subscription_id": (1, T.TYPE_STRING, False)},
    service_pb2.UnsubscribeAllResponse: {"subscription_id": (1, T.TYPE_STRING, False)},
    writeside_pb2.HandleCommandRequest: {
        "command": (1, T.TYPE_MESSAGE, False),
        "prior_state": (2, T.TYPE_MESSAGE, False),
        "prior_event_meta": (3, T.TYPE_MESSAGE, False),
    },
    writeside_pb2.HandleCommandResponse: {
        "event": (1, T.TYPE_MESSAGE, False),
        "events": (2, T.TYPE_MESSAGE, True),
    },
    writeside_pb2.HandleEventRequest: {
        "event": (1, T.TYPE_MESSAGE, False),
        "prior_state": (2, T.TYPE_MESSAGE, False),
        "event_meta": (3, T.TYPE_MESSAGE, False),
    },
    writeside_pb2.HandleEventResponse: {"resulting_state": (1, T.TYPE_MESSAGE, False)},
    readside_pb2.HandleReadSideRequest: {
        "event": (1, T.TYPE_MESSAGE, False),
        "state": (2, T.TYPE_MESSAGE, False),
        "meta": (3, T.TYPE_MESSAGE, False),
        "read_side_id": (4, T.TYPE_STRING, False),
    },
    readside_pb2.HandleReadSideResponse: {"successful": (1, T.TYPE_BOOL, False)},
    persistence_pb2.StateWrapper: {"state": (1, T.TYPE_MESSAGE, False), "meta": (3, T.TYPE_MESSAGE, False)},
    persistence_pb2.EventWrapper: {
        "event": (1, T.TYPE_MESSAGE, False),
        "resulting_state": (2, T.TYPE_MESSAGE, False),
        "meta": (3, T.TYPE_MESSAGE, False),
    },
    manager_pb2.GetLatestOffsetResponse: {"offsets": (1, T.TYPE_MESSAGE, True)},
    manager_pb2.GetLatestOffsetByShardResponse: {"offsets": (1, T.TYPE_MESSAGE, False)},
    manager_pb2.SkipOffsetByShardRequest: {
        "read_side_id": (1, T.TYPE_STRING, False),
        "cluster_shard_number": (2, T.TYPE_UINT64, False),
    },
}


@pytest.mark.parametrize("message", list(EXPECTED), ids=lambda m: m.DESCRIPTOR.full_name)
def test_fields_match_the_spec(message: type) -> None:
    descriptor = message.DESCRIPTOR  # type: ignore[attr-defined]
    assert descriptor.full_name.startswith("chief_of_state.v1.")
    actual = {field.name: (field.number, field.type, field.is_repeated) for field in descriptor.fields}
    assert actual == EXPECTED[message]


def test_header_values_are_a_oneof() -> None:
    assert [f.name for f in common_pb2.Header.DESCRIPTOR.oneofs_by_name["value"].fields] == [
        "string_value",
        "bytes_value",
    ]


def test_services_have_upstreams_method_paths() -> None:
    methods = {
        service.full_name: [method.name for method in service.methods]
        for module in (service_pb2, writeside_pb2, readside_pb2, manager_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
    }
    assert methods == {
        "chief_of_state.v1.ChiefOfStateService": [
            "ProcessCommand",
            "GetState",
            "Subscribe",
            "SubscribeAll",
            "Unsubscribe",
            "UnsubscribeAll",
        ],
        "chief_of_state.v1.WriteSideHandlerService": ["HandleCommand", "HandleEvent"],
        "chief_of_state.v1.ReadSideHandlerService": ["HandleReadSide"],
        "chief_of_state.v1.ReadSideManagerService": [
            "GetLatestOffset",
            "GetLatestOffsetByShard",
            "RestartReadSide",
            "RestartReadSideByShard",
            "PauseReadSide",
            "PauseReadSideByShard",
            "ResumeReadSide",
            "ResumeReadSideByShard",
            "SkipOffset",
            "SkipOffsetByShard",
        ],
    }


def test_generated_modules_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# File options as upstream's published protos set them, so code generated from these files in other
# languages lands in the same packages/namespaces as code generated from upstream's (docs/contract.md §2).
_UPSTREAM_NAMESPACES = {
    "csharp_namespace": "ChiefOfState.V1",
    "go_package": "chief_of_state/v1;chiefofstatev1",
}
UPSTREAM_FILE_OPTIONS = {
    common_pb2: {**_UPSTREAM_NAMESPACES, "java_outer_classname": "CosCommonProto"},
    manager_pb2: {**_UPSTREAM_NAMESPACES, "java_outer_classname": "CosReadSideManagerProto"},
    # upstream's persistence.proto names no C# namespace and no Go package
    persistence_pb2: {"java_outer_classname": "CosPersistenceProto"},
    readside_pb2: {**_UPSTREAM_NAMESPACES, "java_outer_classname": "CosReadSideHandlerProto"},
    service_pb2: {**_UPSTREAM_NAMESPACES, "java_outer_classname": "CosServiceProto"},
    writeside_pb2: {**_UPSTREAM_NAMESPACES, "java_outer_classname": "CosWriteSideHandlerProto"},
}
_LANGUAGE_OPTIONS = ("csharp_namespace", "go_package", "java_outer_classname", "java_package")


@pytest.mark.parametrize("module", list(UPSTREAM_FILE_OPTIONS), ids=lambda m: m.DESCRIPTOR.name)
def test_language_options_match_upstreams_files(module: object) -> None:
    expected = {
        **UPSTREAM_FILE_OPTIONS[module],  # type: ignore[index]
        "java_package": "com.github.chiefofstate.protobuf.v1",
    }
    options = module.DESCRIPTOR.GetOptions()  # type: ignore[attr-defined]
    present = {name: getattr(options, name) for name in _LANGUAGE_OPTIONS if options.HasField(name)}
    assert present == expected
    assert options.java_multiple_files is True
