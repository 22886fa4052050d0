"""Writer ids: one random UUID per entity incarnation, written to the journal's `writer` column as
upstream writes its persistence writer's UUID.

Drawn from a generator seeded once per process from the operating system rather than by
`uuid.uuid4()`, which asks the kernel for 16 bytes on every call: a new entity's first append then
costs a third as much for its id. Ids only need to be unique, not unpredictable.
"""

from __future__ import annotations

import os
import random

_VERSION_BITS = 0xF << 76  # the 13th hex digit
_VERSION_4 = 0x4 << 76
_VARIANT_BITS = 0xC << 60  # the two top bits of the 17th hex digit
_VARIANT_RFC_4122 = 0x8 << 60

_generator = random.Random(os.urandom(32))


def _reseed() -> None:
    # A forked child must not draw the same ids as its parent.
    _generator.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)


def new_writer_id() -> str:
    """A random (version 4) UUID in its usual text form."""
    bits = _generator.getrandbits(128) & ~_VERSION_BITS & ~_VARIANT_BITS | _VERSION_4 | _VARIANT_RFC_4122
    digits = f"{bits:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
