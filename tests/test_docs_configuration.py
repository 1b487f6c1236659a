"""docs/configuration.md names every option the addons register and every key the schema takes.

The options are read from mitmproxy itself (the addon set loaded in its test harness), the keys
by walking the pydantic models of the file (memory_routing/config/schema.py): a new option or
key without a row on the page fails here, and so does a row whose type or default is stale.
"""

from __future__ import annotations

import logging
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import optmanager
from mitmproxy.test import taddons
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from memory_routing.addons import create_addons
from memory_routing.config.schema import ConfigFile

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def rows() -> dict[str, list[str]]:
    """The page's table rows by their first cell (a `name` in backticks): the other cells."""
    found: dict[str, list[str]] = {}
    for line in PAGE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if line.startswith("| `") and len(cells) == 4:
            found[cells[0].strip("`")] = cells[1:]
    return found


def registered_options() -> dict[str, dict[str, object]]:
    """The options the addons add to mitmproxy's own, as ``mitmdump --options`` describes them."""
    # mitmproxy's test context leaves its log handler on the root logger; this runs while the
    # tests are collected, so a later test logging a warning would reach that handler, whose
    # event loop is closed by then.
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        with taddons.context() as bare:
            mitmproxy_own = set(bare.options.keys())
        with taddons.context(*create_addons()) as tctx:
            return dict(optmanager.dump_dicts(tctx.options, sorted(set(tctx.options.keys()) - mitmproxy_own)))
    finally:
        root.handlers[:] = handlers


def nested_models(annotation: object, path: str) -> Iterator[tuple[type[BaseModel], str]]:
    """The models a field's type holds, with the key path their keys hang from (``[]``: a list's items)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, path
        return
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        yield from nested_models(args[0], f"{path}[]")
    elif origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in args if origin is not typing.Annotated else args[:1]:
            yield from nested_models(arg, path)


def schema_keys(model: type[BaseModel] = ConfigFile, prefix: str = "") -> Iterator[tuple[str, object]]:
    """Every key path the file takes, with its default (PydanticUndefined: required)."""
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        required = info.default is PydanticUndefined or (info.default is None and info.validate_default)
        yield path, PydanticUndefined if required else info.default
        for inner, inner_path in nested_models(info.annotation, path):
            yield from schema_keys(inner, inner_path)


def shown(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


OPTIONS = registered_options()
KEYS = dict(schema_keys())


def test_the_walks_find_options_and_keys():
    # Guards the test itself: an empty walk would pass every check below.
    assert {"memory_routing_config", "memory_routing_max_in_flight"} <= set(OPTIONS)
    assert {"model_list[].litellm_params.api_base", "memory.clients[].mode", "general_settings.master_key"} <= set(KEYS)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_registered_option_has_a_row_with_its_type_and_default(name: str):
    option = OPTIONS[name]
    assert name in rows(), f"docs/configuration.md has no row for the option `{name}`"
    type_cell, default_cell, meaning = rows()[name]
    assert type_cell == option["type"]
    default = option["default"]
    for value in default if isinstance(default, list) else [default]:
        if value != "":  # an empty default stands for a derived one (a confdir path, none)
            assert f"`{shown(value)}`" in default_cell
    assert meaning


@pytest.mark.parametrize("path", sorted(KEYS))
def test_every_config_key_has_a_row_with_its_default(path: str):
    assert path in rows(), f"docs/configuration.md has no row for the config key `{path}`"
    type_cell, default_cell, meaning = rows()[path]
    default = KEYS[path]
    if default is PydanticUndefined:
        assert default_cell == "required"
    elif default is not None:
        assert f"`{shown(default)}`" in default_cell
    assert type_cell and meaning
