from importlib import resources

import chiefofstate


def test_the_public_surface_is_small_and_pinned() -> None:
    assert chiefofstate.__all__ == [
        "Code",
        "ConfigError",
        "CosError",
        "Node",
        "Settings",
        "__version__",
        "load_settings",
        "shard_of",
    ]
    for name in chiefofstate.__all__:
        assert getattr(chiefofstate, name) is not None


def test_the_proto_sources_ship_with_the_package() -> None:
    protos = resources.files("chiefofstate") / "protos" / "chief_of_state" / "v1"
    names = sorted(entry.name for entry in protos.iterdir() if entry.name.endswith(".proto"))
    assert names == [
        "common.proto",
        "manager.proto",
        "persistence.proto",
        "readside.proto",
        "service.proto",
        "writeside.proto",
    ]
