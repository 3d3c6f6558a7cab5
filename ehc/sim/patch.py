"""Patch semantics of the API server: strategic merge, JSON merge (RFC 7386) and JSON patch (RFC 6902).

Kept apart from the HTTP layer so the rules the real server applies (conditions merged by ``type``,
``null`` deletes a key, directives tolerated) can be tested on plain dicts.
"""

from __future__ import annotations

from typing import Any

import msgspec

# Merge keys of the list fields a strategic-merge patch meets on the kinds the simulator serves
# (from the ``patchMergeKey`` tags of k8s.io/api). Lists not named here are replaced wholesale.
MERGE_KEYS: dict[str, str] = {
    "conditions": "type",
    "podIPs": "ip",
    "hostIPs": "ip",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
    "ephemeralContainerStatuses": "name",
    "containers": "name",
    "initContainers": "name",
    "ports": "containerPort",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "readinessGates": "conditionType",
    "ownerReferences": "uid",
    "addresses": "type",
}
# Kinds whose list fields differ from the table above under the same names (``ports`` of a Service
# merges by ``port``; an EndpointSlice's ``ports`` and ``endpoints`` and an Endpoints' ``subsets`` are
# ``+listType=atomic``, so a patch replaces them wholesale). Keyed by ``Resource.qualified``.
RESOURCE_MERGE_KEYS: dict[str, dict[str, str]] = {
    "services": {"ownerReferences": "uid", "ports": "port", "conditions": "type"},
    "endpoints": {"ownerReferences": "uid"},
    "endpointslices.discovery.k8s.io": {"ownerReferences": "uid"},
}

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PATCH_TYPES = (JSON_PATCH, MERGE, STRATEGIC)


class PatchError(Exception):
    """A patch the server refuses; ``code`` is the HTTP status (400 malformed, 422 invalid)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def deep_copy(obj: Any) -> Any:
    """A deep copy of JSON data; a msgspec round trip is several times faster than copy.deepcopy."""
    return msgspec.json.decode(msgspec.json.encode(obj))


def apply_patch(
    content_type: str, target: dict[str, Any], body: bytes, resource: str | None = None
) -> dict[str, Any]:
    """Return ``target`` patched by ``body`` of the given patch media type; ``target`` is not modified.

    ``resource`` (``Resource.qualified``) picks the strategic-merge keys of that kind."""
    try:
        patch = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise PatchError(400, f"error decoding patch: {exc}") from None
    if content_type == JSON_PATCH:
        return json_patch(target, patch)
    if not isinstance(patch, dict):
        raise PatchError(400, f"patch must be a JSON object, got {type(patch).__name__}")
    if content_type == MERGE:
        return merge_patch(target, patch)
    result = strategic_merge(target, patch, RESOURCE_MERGE_KEYS.get(resource or "", MERGE_KEYS))
    if not isinstance(result, dict):
        raise PatchError(422, "patch deleted the whole object")
    return result


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge(target: Any, patch: Any, keys: dict[str, str] = MERGE_KEYS) -> Any:
    """Kubernetes strategic merge: like merge patch, but lists with a merge key merge item by item.

    Directives: ``$patch: replace|delete`` on maps and list items, ``$retainKeys`` on maps; the
    ordering directives (``$setElementOrder/…``) and ``$deleteFromPrimitiveList/…`` are accepted and
    ignored, since order carries no meaning for the fields ehc touches.
    """
    if not isinstance(patch, dict):
        return patch
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: v for k, v in patch.items() if not k.startswith("$")}
    if directive == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in keys:
            current = result.get(key)
            result[key] = _merge_list(current if isinstance(current, list) else [], value, keys[key], keys)
        elif isinstance(value, dict):
            merged = strategic_merge(result.get(key), value, keys)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = value
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        keep = set(retain)
        result = {k: v for k, v in result.items() if k in keep or k in patch}
    return result


def _merge_list(
    current: list[Any], patch: list[Any], merge_key: str, keys: dict[str, str] = MERGE_KEYS
) -> list[Any]:
    """Merge list items by ``merge_key``; an item ``{"$patch": "replace"}`` replaces the list."""
    if any(isinstance(i, dict) and i.get("$patch") == "replace" and len(i) == 1 for i in patch):
        return [i for i in patch if not (isinstance(i, dict) and i.get("$patch") == "replace")]
    result = list(current)
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(422, f"list item {item!r} is not an object with merge key {merge_key!r}")
        if merge_key not in item:
            raise PatchError(422, f"map: {item!r} does not contain declared merge key: {merge_key}")
        key = item[merge_key]
        index = next(
            (i for i, cur in enumerate(result) if isinstance(cur, dict) and cur.get(merge_key) == key),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append({k: v for k, v in item.items() if not k.startswith("$")})
        else:
            result[index] = strategic_merge(result[index], item, keys)
    return result


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchError(400, f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str], path: str) -> Any:
    for part in parts:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise PatchError(422, f"path {path!r} does not exist")
    return doc


def _add(doc: Any, parts: list[str], value: Any, path: str) -> Any:
    if not parts:
        return value
    parent = _resolve(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise PatchError(422, f"index {last!r} out of range in {path!r}")
    else:
        raise PatchError(422, f"path {path!r}: parent is not a container")
    return doc


def _remove(doc: Any, parts: list[str], path: str) -> Any:
    if not parts:
        raise PatchError(422, "cannot remove the whole document")
    parent = _resolve(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise PatchError(422, f"path {path!r} does not exist")


def json_patch(target: dict[str, Any], ops: Any) -> dict[str, Any]:
    """RFC 6902 on a deep copy of ``target``: add, remove, replace, move, copy, test."""
    if not isinstance(ops, list):
        raise PatchError(400, "JSON patch must be a list of operations")
    doc: Any = deep_copy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(400, f"invalid JSON patch operation {op!r}")
        kind, path = op["op"], op["path"]
        parts = _pointer(path)
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(400, f"operation {kind!r} needs a value")
        if kind == "add":
            doc = _add(doc, parts, op["value"], path)
        elif kind == "remove":
            _remove(doc, parts, path)
        elif kind == "replace":
            _resolve(doc, parts, path)
            if parts:
                _remove(doc, parts, path)
            doc = _add(doc, parts, op["value"], path)
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from"))
            value = _remove(doc, src, op["from"]) if kind == "move" else deep_copy(_resolve(doc, src, path))
            doc = _add(doc, parts, value, path)
        elif kind == "test":
            if _resolve(doc, parts, path) != op["value"]:
                raise PatchError(422, f"test operation failed at {path!r}")
        else:
            raise PatchError(400, f"unknown JSON patch operation {kind!r}")
    if not isinstance(doc, dict):
        raise PatchError(422, "JSON patch replaced the object with a non-object")
    return doc
