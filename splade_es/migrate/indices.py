"""The indices a migration works on: the target's body, the alias, the source's presence."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ..connect import call, client_of
from ..engines import Dialect, FieldType
from ..exceptions import ConfigurationError


def target_body(
    source_info: Mapping[str, Any],
    *,
    dialect: Dialect,
    sparse_field: str,
    field_type: FieldType,
    passages: bool = False,
) -> dict[str, Any]:
    """The target's ``PUT`` body: the source's settings (minus generated and engine-private
    ones, ``Dialect.copyable_settings``) and mapping, plus the sparse field as the
    ``mappings/`` template defines it for this version (``passages``: the nested layout of
    one object per passage). Pure."""
    settings = dialect.copyable_settings(source_info.get("settings", {}).get("index", {}))
    mappings = copy.deepcopy(dict(source_info.get("mappings", {})))
    properties = mappings.setdefault("properties", {})
    if sparse_field in properties:
        raise ConfigurationError(f"the source already has a field {sparse_field!r}")
    template = dialect.index_body(field_type, sparse_field=sparse_field, passages=passages)
    properties[sparse_field] = template["mappings"]["properties"][sparse_field]
    for key, value in template["settings"].items():
        if key.startswith("index."):  # what the field type needs (index.sparse, ...)
            settings[key.removeprefix("index.")] = value
    return {"settings": {"index": settings}, "mappings": mappings}


def alias_indices(client: Any, alias: str) -> tuple[str, ...]:
    """The indices ``alias`` points at (empty if it does not exist)."""
    if not call(lambda: client.indices.exists_alias(name=alias), f"checking alias {alias}"):
        if call(lambda: client.indices.exists(index=alias), f"checking {alias}"):
            raise ConfigurationError(f"{alias!r} is an index, not an alias")
        return ()
    found = call(lambda: client.indices.get_alias(name=alias), f"reading alias {alias}")
    return tuple(sorted(found))


def switch_alias(client: Any, alias: str, to_index: str) -> tuple[str, ...]:
    """Point ``alias`` at ``to_index`` only, in one atomic ``_aliases`` call."""
    current = alias_indices(client, alias)
    actions: list[dict[str, Any]] = [
        {"remove": {"index": index, "alias": alias}} for index in current if index != to_index
    ]
    actions.append({"add": {"index": to_index, "alias": alias}})
    call(
        lambda: client.indices.update_aliases(body={"actions": actions}),
        f"switching alias {alias}",
    )
    return alias_indices(client, alias)


def require_source(client: Any, source: str) -> None:
    """``ConfigurationError`` unless index (or alias) ``source`` exists: the first thing a
    migration checks, before it counts, reads or loads anything for it."""
    client = client_of(client)
    if not call(lambda: client.indices.exists(index=source), f"checking the source {source}"):
        raise ConfigurationError(f"source index {source!r} does not exist")


def rollback(client: Any, alias: str, source: str) -> tuple[str, ...]:
    """Point ``alias`` back at ``source`` (one atomic call)."""
    client = client_of(client)
    if not call(lambda: client.indices.exists(index=source), f"checking {source}"):
        raise ConfigurationError(f"cannot roll back: index {source!r} does not exist")
    return switch_alias(client, alias, source)
