"""Label and field selectors, parsed and matched as Kubernetes does."""

from __future__ import annotations

import pytest

from emu.apiserver.selectors import FieldSelector, LabelSelector, SelectorError


@pytest.mark.parametrize("text,labels,want", [
    ("", {}, True),
    ("app=web", {"app": "web"}, True),
    ("app==web", {"app": "web"}, True),
    ("app=web", {"app": "db"}, False),
    ("app!=web", {}, True),
    ("app!=web", {"app": "web"}, False),
    ("app in (web,db)", {"app": "db"}, True),
    ("app in (web,db)", {}, False),
    ("app notin (web,db)", {}, True),
    ("app notin (web,db)", {"app": "web"}, False),
    ("app", {"app": ""}, True),
    ("!app", {"app": "x"}, False),
    ("!app", {"other": "x"}, True),
    ("replicas>2", {"replicas": "3"}, True),
    ("replicas<2", {"replicas": "3"}, False),
    ("app=web,tier in (front, back),!canary", {"app": "web", "tier": "back"}, True),
    ("app=web,tier in (front, back),!canary", {"app": "web", "tier": "back", "canary": "1"}, False),
    ("example.com/team=a", {"example.com/team": "a"}, True),
    ("app=", {"app": ""}, True),
])
def test_label_selector_matches(text, labels, want):
    assert LabelSelector.parse(text).matches(labels) is want


@pytest.mark.parametrize("text", ["app in web", "app in (web", "=web", "app=web,", "app>x", "Bad Key=1", "a=b c"])
def test_label_selector_errors(text):
    with pytest.raises(SelectorError):
        LabelSelector.parse(text)


def test_label_selector_from_match():
    sel = LabelSelector.from_match({"matchLabels": {"app": "web"},
                                    "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                                         {"key": "canary", "operator": "DoesNotExist"}]})
    assert sel.matches({"app": "web", "tier": "a"})
    assert not sel.matches({"app": "web", "tier": "c"})
    assert not sel.matches({"app": "web", "tier": "a", "canary": ""})


@pytest.mark.parametrize("text,fields,want", [
    ("metadata.name=x", {"metadata.name": "x"}, True),
    ("metadata.name==x", {"metadata.name": "y"}, False),
    ("metadata.name!=x", {"metadata.name": "y"}, True),
    ("spec.nodeName=", {"spec.nodeName": ""}, True),
    ("spec.nodeName=", {}, True),
    ("status.phase=Running,spec.nodeName=w1", {"status.phase": "Running", "spec.nodeName": "w1"}, True),
    ("status.phase=Running,spec.nodeName=w1", {"status.phase": "Running", "spec.nodeName": "w2"}, False),
    (r"metadata.name=a\,b", {"metadata.name": "a,b"}, True),
])
def test_field_selector_matches(text, fields, want):
    assert FieldSelector.parse(text).matches(fields) is want


def test_field_selector_parse_details():
    sel = FieldSelector.parse("metadata.name=web,spec.nodeName!=w1")
    assert sel.fields() == ["metadata.name", "spec.nodeName"]
    assert sel.value_of("metadata.name") == "web"
    assert sel.value_of("spec.nodeName") is None
    with pytest.raises(SelectorError, match="can't understand 'nonsense'"):
        FieldSelector.parse("nonsense")
