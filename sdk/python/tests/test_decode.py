import json
import math
import os
from pathlib import Path

import pytest

from runagent_client import InternalError, decode_structured
from runagent_client.wire import decode_data

REPO = Path(__file__).resolve().parents[3]


def s(typ, value):
    return json.dumps({"type": typ, "payload": json.dumps(value, ensure_ascii=False)}, ensure_ascii=False)


@pytest.mark.parametrize("typ,value", [
    ("null", None), ("boolean", True), ("boolean", False), ("integer", 42), ("integer", -7),
    ("integer", 2 ** 80), ("number", 1.5), ("string", "héllo 😀"), ("string", ""),
    ("array", [1, "a", None, [2]]), ("object", {"a": {"b": [1, 2.5]}, "é": "ü"}),
])
def test_round_trip(typ, value):
    assert decode_structured(s(typ, value)) == value


def test_types_kept():
    assert type(decode_structured(s("integer", 3))) is int
    assert type(decode_structured(s("number", 3.0))) is float


def test_non_finite_payload():
    v = decode_structured('{"type": "array", "payload": "[NaN, Infinity, -Infinity, \\"NaN\\"]"}')
    assert v[0] is None and v[1] == math.inf and v[2] == -math.inf and v[3] == "NaN"


def test_lenient_forms():
    assert decode_structured('{"type": "string", "payload": "not json"}') == "not json"
    assert decode_structured('{"type": "object", "payload": {"a": 1}}') == {"a": 1}
    assert decode_structured('{"type": "null"}') is None
    assert decode_structured({"type": "integer", "payload": "5"}) == 5


@pytest.mark.parametrize("bad", ["", "nope", "[1]", "{}", '{"type": 3, "payload": "1"}',
                                 '{"type": "object", "payload": "{oops"}'])
def test_malformed(bad):
    with pytest.raises(InternalError) as ei:
        decode_structured(bad)
    assert ei.value.code == "INTERNAL_ERROR" and "malformed" in ei.value.message


def test_decode_data():
    assert decode_data(s("object", {"x": 1})) == {"x": 1}
    assert decode_data({"type": "integer", "payload": "7"}) == 7
    assert decode_data(None) is None
    assert decode_data([1, 2]) == [1, 2]
    assert decode_data({"plain": True}) == {"plain": True}
    with pytest.raises(InternalError):
        decode_data("not a structured string")


def _same(got, want, path="$"):
    if isinstance(want, bool) or want is None or isinstance(want, str):
        assert got == want and type(got) is type(want), path
    elif isinstance(want, (int, float)):
        assert isinstance(got, (int, float)) and not isinstance(got, bool), path
        if isinstance(want, int) and isinstance(got, int):
            assert got == want, path
        else:
            assert math.isclose(got, want, rel_tol=1e-12) or got == want, path
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _same(g, w, "%s[%d]" % (path, i))
    else:
        assert isinstance(got, dict) and set(got) == set(want), path
        for k in want:
            _same(got[k], want[k], "%s.%s" % (path, k))


def test_serializer_vectors():
    """The serializer vectors shared with the server and the Go SDK."""
    path = Path(os.environ.get("RUNAGENT_SERIALIZER_VECTORS") or REPO / "testdata" / "serializer" / "vectors.json")
    if not path.exists():
        pytest.skip("no serializer vectors at %s" % path)
    vectors = json.loads(path.read_text(encoding="utf-8"))
    assert vectors
    for v in vectors:
        st = v["structured"]
        got = decode_structured(st)
        try:
            _same(got, v.get("decoded"))
        except AssertionError as exc:
            raise AssertionError("vector %s (python %s): %s: got %r" % (v.get("name"), v.get("python"), exc, got))


def test_run_body_carries_the_user():
    from runagent_client import RunAgentClient, RunAgentError
    c = RunAgentClient("a", "echo", base_url="http://127.0.0.1:1", user_id="ana", persistent_memory=True)
    body = json.loads(c._run_body((), {"x": 1}))
    assert body["user_id"] == "ana" and body["persistent_memory"] is True and body["input_kwargs"] == {"x": 1}
    c.close()
    plain = RunAgentClient("a", "echo", base_url="http://127.0.0.1:1")
    assert "user_id" not in json.loads(plain._run_body((), {}))
    plain.close()
    with pytest.raises(RunAgentError, match="user_id"):
        RunAgentClient("a", "echo", base_url="http://127.0.0.1:1", persistent_memory=True)
