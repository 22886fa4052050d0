"""chiefofstate: a clustered persistence server for event-sourced applications.

Most users run the `cos` command. Embedding a node in Python needs only these names.

The names are resolved on first use, not on import: a client that only needs the generated stubs
(`chiefofstate.gen...`) imports this package first, and must not pull in the server's dependencies
(the HTTP stack, the database drivers, telemetry) to get them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Code", "ConfigError", "CosError", "Node", "Settings", "__version__", "load_settings", "shard_of"]

_LAZY = {
    "Code": "chiefofstate.core.errors",
    "ConfigError": "chiefofstate.core.errors",
    "CosError": "chiefofstate.core.errors",
    "Node": "chiefofstate.node.node",
    "Settings": "chiefofstate.config.settings",
    "load_settings": "chiefofstate.config.settings",
    "shard_of": "chiefofstate.core.sharding",
}

if TYPE_CHECKING:
    from chiefofstate.config.settings import Settings, load_settings
    from chiefofstate.core.errors import Code, ConfigError, CosError
    from chiefofstate.core.sharding import shard_of
    from chiefofstate.node.node import Node


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chiefofstate' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
