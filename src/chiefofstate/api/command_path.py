"""The command path shared by the gRPC and HTTP APIs: validation, time budget, logging (SPEC.md §3).

Both protocols hand their requests to the same EntityHost through this class, so a command behaves
the same whichever door it came in by; only the encoding of the answer differs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from google.protobuf.any_pb2 import Any as AnyProto

from chiefofstate.api.grpc_errors import as_cos_error
from chiefofstate.core.command_rules import validate_entity_id
from chiefofstate.core.errors import Code, CosError
from chiefofstate.core.headers import Metadata
from chiefofstate.entities.deadline import Deadline
from chiefofstate.entities.host import EntityHost
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import StateWrapper

log = logging.getLogger("chiefofstate.api")


class CommandPath:
    def __init__(
        self,
        host: EntityHost,
        command_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._host = host
        self._command_timeout_s = command_timeout_s
        self._clock = clock

    def _deadline(self, caller_left_s: float | None) -> Deadline:
        # Decision D4: the caller's deadline and COS_COMMAND_HANDLER_TIMEOUT bound the whole command.
        budget = min(self._command_timeout_s, caller_left_s if caller_left_s is not None else math.inf)
        return Deadline(self._clock() + budget, self._clock)

    async def process_command(
        self, entity_id: str, command: AnyProto, metadata: Metadata, caller_left_s: float | None
    ) -> StateWrapper:
        """The entity's new state; any failure is raised as a CosError and logged once."""
        try:
            validate_entity_id(entity_id)
            return await self._host.process_command(
                entity_id, command, metadata, self._deadline(caller_left_s)
            )
        except Exception as failure:
            error = as_cos_error(failure)
            log.warning(
                "command failed: entity_id=%s command_type=%s status=%s message=%s",
                entity_id,
                command.type_url,
                error.code.name,
                error.message,
                extra={"entity_id": entity_id, "status": error.code.name},
                exc_info=not isinstance(failure, CosError),
            )
            if error is failure:
                raise
            raise error from failure

    async def get_state(self, entity_id: str, caller_left_s: float | None) -> StateWrapper:
        try:
            validate_entity_id(entity_id)
            return await self._host.get_state(entity_id, self._deadline(caller_left_s))
        except Exception as failure:
            error = as_cos_error(failure)
            if error.code is not Code.NOT_FOUND:
                log.warning(
                    "get state failed: entity_id=%s status=%s message=%s",
                    entity_id,
                    error.code.name,
                    error.message,
                    exc_info=not isinstance(failure, CosError),
                )
            if error is failure:
                raise
            raise error from failure
