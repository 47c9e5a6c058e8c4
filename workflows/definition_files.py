"""Workflow definitions as files: JSON or YAML in, the same dict out."""

from __future__ import annotations

import yaml

from workflows.events.envelope import InvalidEvent, loads_json

YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}


class UnreadableDefinition(ValueError):
    pass


def load_definition_text(body: bytes, *, yaml_format: bool) -> object:
    """Decode a definition body; raise UnreadableDefinition with a message for people."""
    if not yaml_format:
        try:
            return loads_json(body)
        except InvalidEvent as exc:
            raise UnreadableDefinition(str(exc).replace("(body): ", "")) from exc
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableDefinition(f"not UTF-8: {exc}") from exc
    try:
        # safe_load: plain data only, no Python object tags. Aliases are refused below so a
        # "billion laughs" document cannot expand in memory.
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None and _has_alias(node):
                raise UnreadableDefinition("YAML anchors and aliases are not accepted")
            return loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise UnreadableDefinition(f"invalid YAML: {exc}") from exc
    except RecursionError:
        # PyYAML composes nested collections recursively: "[[[[…" thousands deep ends here.
        raise UnreadableDefinition("invalid YAML: nested too deep") from None


def _has_alias(node, seen=None) -> bool:
    seen = seen if seen is not None else set()
    if id(node) in seen:
        return True  # the same node reached twice: an alias
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        return any(_has_alias(k, seen) or _has_alias(v, seen) for k, v in node.value)
    if isinstance(node, yaml.SequenceNode):
        return any(_has_alias(item, seen) for item in node.value)
    return False


def dump_definition(definition: dict, *, yaml_format: bool) -> str:
    if yaml_format:
        return yaml.safe_dump(definition, sort_keys=False, allow_unicode=True)
    import json

    return json.dumps(definition, indent=2, ensure_ascii=False) + "\n"
