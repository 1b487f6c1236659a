"""LocalStores: the one SQLite file, opened at start-up, 0600, closed in done()."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from memory_routing.local.stores import DEFAULT_STORE_NAME, LocalStores


def test_default_file_lives_in_confdir_with_mode_0600(tmp_path: Path):
    stores = LocalStores()
    with taddons.context(stores) as tctx:
        tctx.configure(stores, confdir=str(tmp_path))
        assert stores.path == tmp_path / DEFAULT_STORE_NAME
        assert stores.memory is not None and stores.usage is not None
        assert stat.S_IMODE((tmp_path / DEFAULT_STORE_NAME).stat().st_mode) == 0o600
        assert stores.usage.recent() == []
        stores.done()
    assert stores.memory is None and stores.usage is None


def test_option_path_is_expanded_and_reopened_on_change(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    stores = LocalStores()
    with taddons.context(stores) as tctx:
        tctx.configure(stores, memory_routing_store="~/a.sqlite3")
        assert stores.path == tmp_path / "a.sqlite3"
        first = stores.memory
        tctx.configure(stores, memory_routing_store=str(tmp_path / "b.sqlite3"))
        assert stores.path == tmp_path / "b.sqlite3" and stores.memory is not first
        stores.done()


def test_drains_run_before_the_file_closes(tmp_path: Path):
    stores = LocalStores()
    seen: list[bool] = []
    stores.before_close.append(lambda: seen.append(stores.usage is not None))
    with taddons.context(stores) as tctx:
        tctx.configure(stores, confdir=str(tmp_path))
        stores.done()
    assert seen == [True]


def test_unopenable_store_names_the_option_and_path(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    stores = LocalStores()
    with taddons.context(stores) as tctx:
        with pytest.raises(exceptions.OptionsError, match=r"memory_routing_store: cannot open .*file/store"):
            tctx.configure(stores, memory_routing_store=str(blocker / "store.sqlite3"))
