"""Label and field selectors as the API server parses them, compiled to predicates over plain dicts."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Predicate = Callable[[dict[str, Any]], bool]

# Field selectors the real server accepts per resource (plus metadata.name/namespace everywhere);
# anything else is a 400, as with kube-apiserver.
FIELDS: dict[str, frozenset[str] | None] = {
    "pods": frozenset(
        {
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        }
    ),
    "events": None,  # events accept many fields (involvedObject.*, reason, type, …): allow any
}
_LABEL_REQ = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9][-A-Za-z0-9_./]*)\s*"
    r"(?:(?P<op>==|=|!=|\s+in\s+|\s+notin\s+)\s*(?P<val>\([^)]*\)|[-A-Za-z0-9_.]*))?\s*$"
)


class SelectorError(ValueError):
    """An unparsable selector (the server answers 400)."""


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def label_selector(text: str | None) -> Predicate | None:
    """Compile ``a=b,c!=d,e in (f,g),h notin (i),j,!k``; ``None`` when there is nothing to filter."""
    if not text:
        return None
    checks: list[Callable[[dict[str, str]], bool]] = []
    for req in _split(text):
        m = _LABEL_REQ.match(req)
        if not m:
            raise SelectorError(f"unable to parse requirement: {req!r}")
        key, op, val = m["key"], (m["op"] or "").strip(), m["val"]
        if m["neg"]:
            if op:
                raise SelectorError(f"unable to parse requirement: {req!r}")
            checks.append(lambda labels, k=key: k not in labels)
        elif not op:
            checks.append(lambda labels, k=key: k in labels)
        elif op in ("=", "=="):
            checks.append(lambda labels, k=key, v=val: labels.get(k) == v)
        elif op == "!=":
            checks.append(lambda labels, k=key, v=val: labels.get(k) != v)
        else:
            if not val or not val.startswith("("):
                raise SelectorError(f"set requirement needs (values): {req!r}")
            values = frozenset(v.strip() for v in val[1:-1].split(",") if v.strip())
            if op == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)

    def match(obj: dict[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return match


def field_value(obj: dict[str, Any], path: str) -> str:
    """The string form of a dotted field; missing fields read as "" like the real server's."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return ""
        cur = cur[part]
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return "" if cur is None else str(cur)


def field_selector(text: str | None, resource: str) -> Predicate | None:
    """Compile ``spec.nodeName=n1,status.phase!=Failed``; unknown fields raise ``SelectorError``."""
    if not text:
        return None
    allowed = FIELDS.get(resource, frozenset())
    checks: list[tuple[str, bool, str]] = []
    for req in _split(text):
        if "!=" in req:
            path, value = req.split("!=", 1)
            negate = True
        elif "=" in req:
            path, value = req.replace("==", "=", 1).split("=", 1)
            negate = False
        else:
            raise SelectorError(f"invalid field selector requirement: {req!r}")
        path = path.strip()
        if (
            path not in ("metadata.name", "metadata.namespace")
            and allowed is not None
            and path not in allowed
        ):
            raise SelectorError(f'field label not supported: "{path}"')
        checks.append((path, negate, value.strip()))

    def match(obj: dict[str, Any]) -> bool:
        return all((field_value(obj, p) == v) != neg for p, neg, v in checks)

    return match


def combine(*predicates: Predicate | None) -> Predicate | None:
    """AND the given predicates, skipping ``None``."""
    preds = [p for p in predicates if p is not None]
    if not preds:
        return None
    if len(preds) == 1:
        return preds[0]
    return lambda obj: all(p(obj) for p in preds)
