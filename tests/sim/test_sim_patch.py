"""Patch and selector semantics of the simulated API server, on plain dicts."""

from __future__ import annotations

import msgspec
import pytest

from ehc.sim.patch import JSON_PATCH, MERGE, STRATEGIC, PatchError, apply_patch
from ehc.sim.selectors import SelectorError, field_selector, label_selector

POD = {
    "metadata": {"name": "p", "labels": {"app": "web", "tier": "front"}},
    "spec": {"nodeName": "n1"},
    "status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}],
    },
}


def _apply(ctype: str, patch: object) -> dict:
    return apply_patch(ctype, POD, msgspec.json.encode(patch))


def test_strategic_merges_conditions_by_type() -> None:
    out = _apply(
        STRATEGIC,
        {"status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "X", "status": "True"}]}},
    )
    assert out["status"]["conditions"] == [
        {"type": "Ready", "status": "False"},
        {"type": "ContainersReady", "status": "True"},
        {"type": "X", "status": "True"},
    ]
    assert POD["status"]["conditions"][0]["status"] == "True"  # input untouched


def test_strategic_directives_are_tolerated() -> None:
    out = _apply(
        STRATEGIC,
        {
            "$retainKeys": ["metadata", "spec", "status"],
            "status": {
                "$setElementOrder/conditions": [{"type": "Ready"}],
                "conditions": [{"type": "ContainersReady", "$patch": "delete"}],
            },
        },
    )
    assert [c["type"] for c in out["status"]["conditions"]] == ["Ready"]
    with pytest.raises(PatchError) as e:
        _apply(STRATEGIC, {"status": {"conditions": [{"status": "False"}]}})
    assert e.value.code == 422


def test_merge_patch_replaces_lists_and_null_deletes() -> None:
    out = _apply(
        MERGE, {"status": {"conditions": [{"type": "Ready", "status": "False"}]}, "spec": {"nodeName": None}}
    )
    assert out["status"]["conditions"] == [{"type": "Ready", "status": "False"}]
    assert "nodeName" not in out["spec"]


def test_json_patch_ops_and_errors() -> None:
    out = _apply(
        JSON_PATCH,
        [
            {"op": "test", "path": "/status/conditions/0/type", "value": "Ready"},
            {"op": "replace", "path": "/status/conditions/0/status", "value": "False"},
            {"op": "add", "path": "/metadata/labels/a~1b", "value": "x"},
            {"op": "remove", "path": "/metadata/labels/tier"},
        ],
    )
    assert out["status"]["conditions"][0]["status"] == "False"
    assert out["metadata"]["labels"] == {"app": "web", "a/b": "x"}
    for bad, code in (
        ({"op": "add"}, 400),
        ([{"op": "test", "path": "/status/phase", "value": "Pending"}], 422),
        ([{"op": "remove", "path": "/nope"}], 422),
    ):
        with pytest.raises(PatchError) as e:
            _apply(JSON_PATCH, bad)
        assert e.value.code == code
    with pytest.raises(PatchError) as e:
        apply_patch(STRATEGIC, POD, b"{not json")
    assert e.value.code == 400


def test_label_selectors() -> None:
    def m(s: str) -> bool:
        sel = label_selector(s)
        assert sel is not None
        return sel(POD)

    assert m("app=web") and m("app==web") and m("tier!=back") and m("app in (web, api)") and m("app")
    assert m("!missing") and m("app notin (api),tier")
    assert not m("app=api") and not m("missing") and not m("app in (api)")
    with pytest.raises(SelectorError):
        label_selector("app=(x")


def test_field_selectors() -> None:
    sel = field_selector("spec.nodeName=n1,status.phase!=Failed", "pods")
    assert sel is not None and sel(POD)
    sel = field_selector("spec.nodeName=n2", "pods")
    assert sel is not None and not sel(POD)
    with pytest.raises(SelectorError):
        field_selector("spec.bogus=1", "pods")
