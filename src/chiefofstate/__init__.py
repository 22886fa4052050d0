"""chiefofstate: a clustered persistence server for event-sourced applications.

Most users run the `cos` command. Embedding a node in Python needs only these names.
"""

from chiefofstate.config.settings import Settings, load_settings
from chiefofstate.core.errors import Code, ConfigError, CosError
from chiefofstate.core.sharding import shard_of
from chiefofstate.node.node import Node

__version__ = "0.1.0"

__all__ = ["Code", "ConfigError", "CosError", "Node", "Settings", "__version__", "load_settings", "shard_of"]
