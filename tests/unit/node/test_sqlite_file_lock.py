"""One node per SQLite file: the lock `cos serve` and `cos migrate` hold (docs/cluster.md, "Workers")."""

from __future__ import annotations

from pathlib import Path

import pytest

from chiefofstate.config.settings import DatabaseSettings, StoreSettings
from chiefofstate.core.errors import ConfigError, StoreUnavailable
from chiefofstate.node.stores import exclusive_use


def sqlite(path: Path) -> StoreSettings:
    return StoreSettings(postgres=None, sqlite_path=path, migrations_initial_version=None)


def test_a_second_holder_is_refused_naming_the_file_and_the_first_holder(tmp_path: Path) -> None:
    store = sqlite(tmp_path / "cos.db")
    with exclusive_use(store, "starting a node"):
        with pytest.raises(ConfigError) as caught, exclusive_use(store, "starting another node"):
            pass
        assert caught.value.variable == "COS_DB_PATH"
        message = str(caught.value)
        assert str(tmp_path / "cos.db") in message and "pid" in message and "\n" not in message
    with exclusive_use(store, "starting a node"):  # released with its holder
        pass
    assert (tmp_path / "cos.db.lock").exists()


def test_other_files_and_postgres_are_not_locked(tmp_path: Path) -> None:
    with exclusive_use(sqlite(tmp_path / "a.db"), "a"), exclusive_use(sqlite(tmp_path / "b.db"), "b"):
        pass
    postgres = DatabaseSettings("db", 5432, "postgres", "u", "p", "public", 5, 1, 60, 120, 5, 5)
    store = StoreSettings(postgres=postgres, sqlite_path=tmp_path / "c.db", migrations_initial_version=None)
    with exclusive_use(store, "one"), exclusive_use(store, "two"):
        pass
    assert not (tmp_path / "c.db.lock").exists()


def test_a_folder_that_does_not_exist_is_the_store_being_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable), exclusive_use(sqlite(tmp_path / "nope" / "cos.db"), "x"):
        pass
