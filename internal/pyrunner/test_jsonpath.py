"""Tests of the runner's extractor (_runagent_runner.jsonpath): the JSONPath
subset of jsonpath_ng 1.7.0 and to_dict.

Run with:  python3 -m pytest -q internal/pyrunner
"""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "runagent_runner"))
from _runagent_runner import jsonpath as R  # noqa: E402


# ---------------------------------------------------------------------------
# JSONPath subset
# ---------------------------------------------------------------------------

DOC = {
    "data": {"items": [{"text": "first", "n": 1}, {"text": "second", "n": 2}]},
    "meta": {"text": "meta-text", "tags": ["a", "b", "c"]},
    "x-y": 5,
}


@pytest.mark.parametrize("path,want", [
    ("$", DOC),
    ("$.meta.text", "meta-text"),
    ("meta.text", "meta-text"),
    ("$['meta']['text']", "meta-text"),
    ('$["meta"]["tags"][1]', "b"),
    ("$.meta.tags[-1]", "c"),
    ("$.meta.tags[*]", "a"),
    ("$.data.items[*].text", "first"),
    ("$.data.items[1].text", "second"),
    ("$..text", "first"),
    ("$..n", 1),
    ("$.meta.*", "meta-text"),
    ("$['nope','meta'].text", "meta-text"),
    ("$[nope,meta].text", "meta-text"),
    ("$.meta.tags[1:]", "b"),
    ("$.x-y", 5),
    ("$.missing", None),
    ("$.meta.tags[7]", None),
    ("$.meta.text[0]", "m"),        # jsonpath_ng indexes strings
    ("$.meta[*].text", "meta-text"),  # [*] on an object yields the object (jsonpath_ng quirk)
    ("$.meta.tags.*", None),        # .* on a list matches nothing
])
def test_jsonpath(path, want):
    ext = R.compile_extractor({"v": path})
    assert ext(DOC) == {"v": want}


def test_jsonpath_recursive_descent_order():
    doc = {"a": {"b": {"text": 1}}, "text": 2, "c": [{"text": 3}]}
    steps = R.compile_jsonpath("$..text")
    assert R.jsonpath_find(steps, doc) == [2, 1, 3]


def test_jsonpath_index_out_of_range_negative_raises_like_jsonpath_ng():
    ext = R.compile_extractor({"v": "$.a[-5]"})
    with pytest.raises(IndexError):
        ext({"a": [1, 2]})


@pytest.mark.parametrize("path", [
    "", "$.", "$[", "$..", "$.a[", "$.a]", "$[?(@.a)]", "$.a | $.b", "`this`", "$.where",
    "$.名前", "$[a:b]", "$.a[0", "$['a'",
])
def test_jsonpath_rejects_unsupported(path):
    with pytest.raises(R.JSONPathError):
        R.compile_extractor({"v": path})


def test_extractor_to_dict_and_key_order():
    class M:
        def model_dump(self):
            return {"choices": [{"message": {"content": "hi"}}], "id": "x"}

    ext = R.compile_extractor([["z", "$.id"], ["a", "$.choices[0].message.content"]])
    assert list(ext(M())) == ["z", "a"]
    assert ext(M()) == {"z": "x", "a": "hi"}
    assert R.compile_extractor({}) is None
    assert R.compile_extractor(None) is None
