"""Tests of the runner's value encoding (_runagent_runner.encoding).

Run with:  python3 -m pytest -q internal/pyrunner

The serializer vectors (testdata/serializer/vectors.json) were recorded from the
original RunAgent 0.1.49 code. Their "python" expressions are evaluated after
PRELUDE below was executed in a fresh, empty namespace (exec(PRELUDE, {})),
which is why classes print as "<class 'ModelLike'>". They were recorded with
Python 3.11: under another version only the interpreter's own error texts inside
the serialization-error fallback may differ (e.g. 3.12 appends ": nan"), and the
original running on that version would produce the same text as the runner.
"""

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.normpath(os.path.join(HERE, "..", "..", "testdata", "serializer",
                                        "vectors.json"))

sys.path.insert(0, os.path.join(HERE, "runagent_runner"))
from _runagent_runner import encoding as R  # noqa: E402

PRELUDE = '''
import enum
import uuid
import decimal
import collections
import dataclasses
import datetime as dt


@dataclasses.dataclass
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Wrapper:
    name: str
    point: Point
    tags: list


class ModelLike:
    """pydantic-like: model_dump() returns a dict; private state in __dict__."""

    def __init__(self, **kw):
        self._data = kw
        self._secret = "s3cret"

    def model_dump(self):
        return dict(self._data)


class DictLike:
    """pydantic-v1-like: dict() returns a dict."""

    def __init__(self, **kw):
        self.kw = kw

    def dict(self):
        return dict(self.kw)


class ToDict:
    """pandas-like: to_dict()."""

    def __init__(self, **kw):
        self.kw = kw

    def to_dict(self):
        return dict(self.kw)


class Plain:
    def __init__(self):
        self.a = 1
        self.b = "two"
        self._private = "hidden"
        self.nested = [1.5, None]


class Slotted:
    """No __dict__, no dict/model_dump: only str()."""

    __slots__ = ("v",)

    def __init__(self, v):
        self.v = v

    def __str__(self):
        return "Slotted(%s)" % self.v


class BadDump:
    """model_dump raises."""

    def __init__(self):
        self.visible = 1
        self._hidden = 2

    def model_dump(self):
        raise RuntimeError("model_dump exploded")


class BadToDict:
    """to_dict raises."""

    def __init__(self):
        self.k = "v"

    def to_dict(self):
        raise ValueError("to_dict exploded")


class StrColor(str, enum.Enum):
    RED = "red"


class IntLevel(enum.IntEnum):
    HIGH = 3


NT = collections.namedtuple("NT", "a b")


def some_function():
    return None
'''


# ---------------------------------------------------------------------------
# Serializer vectors
# ---------------------------------------------------------------------------

with open(VECTORS, encoding="utf-8") as _f:
    VECTOR_LIST = json.load(_f)


def _prelude_ns():
    ns = {}
    exec(PRELUDE, ns)
    return ns


def test_vectors_file_shape():
    assert len(VECTOR_LIST) >= 40
    names = [v["name"] for v in VECTOR_LIST]
    assert len(names) == len(set(names))
    for v in VECTOR_LIST:
        assert set(v) == {"name", "mode", "python", "structured", "decoded"}
        assert v["mode"] in ("result", "chunk")
        outer = json.loads(v["structured"])
        assert list(outer) == ["type", "payload"]
        assert outer["type"] in ("null", "boolean", "integer", "number", "string", "array", "object")
        assert json.loads(outer["payload"]) == v["decoded"]


VECTORS_PYTHON = (3, 11)


@pytest.mark.parametrize("vec", VECTOR_LIST, ids=[v["name"] for v in VECTOR_LIST])
def test_vector(vec):
    obj = eval(vec["python"], _prelude_ns())
    if vec["mode"] == "result":
        got = R.structured(obj)
    else:
        got = R.structured_chunk(obj)
    if sys.version_info[:2] != VECTORS_PYTHON and "Serialization Error: " in vec["structured"]:
        want = json.loads(json.loads(vec["structured"])["payload"])
        have = json.loads(json.loads(got)["payload"])
        assert list(have) == ["error", "original_type"]
        assert have["original_type"] == want["original_type"]
        assert have["error"].startswith("Serialization Error: ")
        pytest.skip("error text recorded with Python %d.%d" % VECTORS_PYTHON)
    assert got == vec["structured"]
    # what goes on the wire is exactly its UTF-8 encoding
    if vec["mode"] == "result":
        assert R.structured_bytes(obj) == vec["structured"].encode("utf-8")
    else:
        assert R.chunk_bytes(obj, 1) == vec["structured"].encode("utf-8")


def test_fast_paths_agree_with_general_path():
    # structured_bytes has fast paths for exact builtin types; they must give
    # what determine_type + prepare + the encoder give.
    values = [
        "x", "é", 0, -1, 2 ** 80, True, False, None, [], {}, [1, [2, [3.5, float("nan")]]],
        {"a": float("inf"), "b": [float("-inf"), {"c": (1, 2)}], 3: {4}},
        [b"ab", {"k": b"\x00"}], {"d": R}, [None, True, 1.0, "s"],
    ]
    for v in values:
        kind = R.determine_type(v)
        try:
            payload = R._encode_payload(R.prepare(v))
            payload.encode("utf-8")
            want = json.dumps({"type": kind, "payload": payload}, ensure_ascii=False)
        except (ValueError, TypeError) as e:
            want = R._error_structured(e, v)
        assert R.structured(v) == want, v


def test_chunk_conversion_fallbacks():
    class NoStr:
        __slots__ = ()

        def __str__(self):
            raise RuntimeError("no str")

        def __repr__(self):
            return "NoStr()"

    # str() raising is swallowed: {"type", "repr"}
    assert json.loads(json.loads(R.structured_chunk(NoStr()))["payload"]) == {
        "type": "NoStr", "repr": "NoStr()"}

    class BadDict:
        @property
        def __dict__(self):
            raise RuntimeError("no dict")

        def __str__(self):
            return "BadDict!"

    # the conversion itself raising: the original's conversion_error chunk
    assert json.loads(json.loads(R.chunk_bytes(BadDict(), 7))["payload"]) == {
        "chunk_number": 7, "conversion_error": "no dict",
        "chunk_type": str(BadDict), "chunk_str": "BadDict!"}
