"""kubectl-style YAML: multi-document files and `kind: List`, with errors that say where."""

from __future__ import annotations

from typing import Any

import yaml


class ResourceError(Exception):
    """Bad input: the message names the object (kind/namespace/name), the field and the problem."""


def parse_documents(text: str, source: str) -> list[dict[str, Any]]:
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ResourceError(f"{source}:{where}: malformed YAML: {problem}") from exc
    objects: list[dict[str, Any]] = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, dict):
            raise ResourceError(f"{source}: document {index + 1} is a {type(document).__name__}, not an object")
        if document.get("kind") == "List":
            items = document.get("items") or []
            if not isinstance(items, list):
                raise ResourceError(f"{source}: document {index + 1}: field 'items' of a List must be a list")
            objects.extend(items)
        else:
            objects.append(document)
    return objects
