"""Schema creation and upgrades on boot, as upstream does them (docs/contract.md §4.6).

The versioned SQL files live in `stores/<dialect>/migrations/` and ship in the wheel:

* `bootstrap.sql` creates the `cos_migrations` history table;
* `NNNN_initial.sql` is the full schema at version NNNN, used on an empty database (upstream's "snapshot");
* `NNNN_<name>.sql` upgrades version NNNN-1 to NNNN.

The runner is shared by both stores; each store supplies a `MigrationSession`, the small seam that knows
how to open an exclusive transaction and run a script in its dialect.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from importlib import resources
from typing import Literal, Protocol

from chiefofstate.core.errors import ConfigError, MigrationError

Dialect = Literal["postgres", "sqlite"]

_LOG = logging.getLogger("chiefofstate.migrations")

INITIAL_VERSION_VARIABLE = "COS_MIGRATIONS_INITIAL_VERSION"

_SCRIPT_NAME = re.compile(r"(?P<version>[0-9]{4})_(?P<name>[a-z0-9_]+)\.sql")
# Java's Integer.parseInt accepts an optional sign and ASCII digits only; Python's int() is laxer.
_JAVA_INT = re.compile(r"[+-]?[0-9]+")
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1

__all__ = ["MigrationError", "MigrationScripts", "load_scripts", "parse_initial_version", "run_migrations"]


@dataclass(frozen=True, slots=True)
class MigrationScripts:
    bootstrap: str
    snapshot_version: int
    snapshot: str
    upgrades: tuple[tuple[int, str], ...]  # (version, script), ascending

    @property
    def latest_version(self) -> int:
        return max([self.snapshot_version, *(version for version, _ in self.upgrades)])


def load_scripts(dialect: Dialect) -> MigrationScripts:
    """Read the SQL files of one dialect from the installed package."""
    folder = resources.files("chiefofstate.stores").joinpath(dialect, "migrations")
    bootstrap = ""
    snapshots: dict[int, str] = {}
    upgrades: dict[int, str] = {}
    for entry in folder.iterdir():
        if entry.name == "bootstrap.sql":
            bootstrap = entry.read_text(encoding="utf-8")
            continue
        match = _SCRIPT_NAME.fullmatch(entry.name)
        if match is None:
            continue
        version = int(match["version"])
        target = snapshots if match["name"] == "initial" else upgrades
        if version in target:
            raise MigrationError(f"two {dialect} migration scripts for version {version}")
        target[version] = entry.read_text(encoding="utf-8")
    if not bootstrap or not snapshots:
        raise MigrationError(f"the {dialect} migration scripts are missing from the installed package")
    snapshot_version = max(snapshots)
    return MigrationScripts(
        bootstrap=bootstrap,
        snapshot_version=snapshot_version,
        snapshot=snapshots[snapshot_version],
        upgrades=tuple(sorted(upgrades.items())),
    )


def split_statements(script: str) -> list[str]:
    """The statements of a script, for drivers that run one statement per call.

    The SQLite scripts hold plain DDL only (no semicolons inside literals, no triggers), so a split on
    `;` after dropping comment lines is exact for them. PostgreSQL runs each script in one call; its
    scripts may hold function bodies and must not go through this.
    """
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in code.split(";") if statement.strip()]


def parse_initial_version(value: str) -> int:
    """COS_MIGRATIONS_INITIAL_VERSION, validated with upstream's messages (docs/contract.md §4.6 step 3);
    surrounding whitespace is trimmed first, as upstream does."""
    value = value.strip()
    if value == "":
        raise ConfigError(INITIAL_VERSION_VARIABLE, "setting provided empty")
    if _JAVA_INT.fullmatch(value) is None or not _INT_MIN <= int(value) <= _INT_MAX:
        raise ConfigError(INITIAL_VERSION_VARIABLE, f"cannot be '{value}'")
    return int(value)


class MigrationSession(Protocol):
    """One database connection, seen through what the runner needs of it."""

    def exclusive_transaction(self) -> AbstractAsyncContextManager[None]:
        """A transaction that no other migrating node runs at the same time (commit on success)."""
        ...

    async def prepare(self, scripts: MigrationScripts) -> None:
        """Create the schema (where the dialect has schemas) and the history table; inside a transaction."""
        ...

    async def run_script(self, script: str) -> None: ...

    async def current_version(self) -> int | None:
        """The highest recorded version; None when the history is empty."""
        ...

    async def record_version(self, version: int, upgraded_at_ms: int, is_snapshot: bool) -> None: ...


async def run_migrations(
    session: MigrationSession,
    scripts: MigrationScripts,
    *,
    initial_version: str | None,
    now_ms: Callable[[], int],
) -> int:
    """Bring the schema to the latest version (docs/contract.md §4.6); returns the version now in place.

    Every step re-reads the recorded version inside its own exclusive transaction, so nodes booting at
    the same time each see the others' finished steps and skip them instead of failing.
    """
    async with session.exclusive_transaction():
        await session.prepare(scripts)
    async with session.exclusive_transaction():
        current = await session.current_version()
        if current is None and initial_version is not None:
            current = parse_initial_version(initial_version)
            await session.record_version(current, now_ms(), True)
        if current is None:
            await session.run_script(scripts.snapshot)
            await session.record_version(scripts.snapshot_version, now_ms(), True)
            current = scripts.snapshot_version
    if current > scripts.latest_version:
        raise MigrationError(
            f"the database schema is at version {current}, newer than this release supports "
            f"(up to {scripts.latest_version}); run a release that knows version {current}"
        )
    for version, script in scripts.upgrades:
        if version <= current:
            continue
        async with session.exclusive_transaction():
            recorded = await session.current_version()
            if recorded is None:
                raise MigrationError("no prior version, cannot upgrade")
            if recorded >= version:
                current = recorded
                continue
            if recorded + 1 != version:
                oldest = scripts.upgrades[0][0] - 1
                raise MigrationError(
                    f"the database schema is at version {recorded}, too old for this release to upgrade "
                    f"(it upgrades from version {oldest} on); upgrade it with an older release first"
                )
            started = time.monotonic()
            await session.run_script(script)
            await session.record_version(version, now_ms(), False)
            current = version
            # Said per step so that a long takeover of a large database shows where its time goes.
            _LOG.info("schema upgraded to version %d in %.2fs", version, time.monotonic() - started)
    return current
