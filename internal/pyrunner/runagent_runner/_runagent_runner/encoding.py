"""Value encoding, byte-compatible with runagent.utils.serializer.CoreSerializer
(serialize_object_to_structured) and AgentWebSocketHandler.
_convert_chunk_to_serializable of RunAgent 0.1.49
(testdata/serializer/vectors.json).

structured_bytes(obj) is what a RESULT carries, chunk_bytes(chunk, n) what the
n-th CHUNK of a stream carries."""

import dataclasses
import json
import math
from datetime import date, datetime, time

_json_dumps = json.dumps  # ASCII output: always encodable


def _json_fallback(obj):
    """CoreSerializer._json_serializer_fallback."""
    try:
        if hasattr(obj, "__dataclass_fields__"):
            return dataclasses.asdict(obj)
        elif hasattr(obj, "model_dump"):
            return obj.model_dump()
        elif hasattr(obj, "dict"):
            return obj.dict()
        elif hasattr(obj, "__dict__"):
            return obj.__dict__
        else:
            return str(obj)
    except Exception:
        return "<Unserializable %s>" % type(obj).__name__


# json.dumps(x, ensure_ascii=False, allow_nan=False, default=fallback) builds
# exactly this encoder for every call; building it once gives the same bytes.
_encode_payload = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, default=_json_fallback).encode
# What json.dumps(str, ensure_ascii=False) does to a str.
_encode_str = json.encoder.encode_basestring
_isnan = math.isnan
_isinf = math.isinf


def determine_type(obj):
    """CoreSerializer._determine_type."""
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "boolean"
    if isinstance(obj, int):
        return "integer"
    if isinstance(obj, float):
        return "number"
    if isinstance(obj, str):
        return "string"
    if isinstance(obj, (list, tuple, set)):
        return "array"
    if isinstance(obj, dict):
        return "object"
    if (hasattr(obj, "to_dict") or hasattr(obj, "model_dump")
            or hasattr(obj, "dict") or hasattr(obj, "__dict__")):
        return "object"
    return "string"


def prepare(obj):
    """CoreSerializer._prepare_for_serialization."""
    if obj is None:
        return None
    if isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if _isnan(obj):
            return None
        elif _isinf(obj):
            return str(obj)
        return obj
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, time):
        return obj.isoformat()
    if isinstance(obj, set):
        return list(obj)
    if isinstance(obj, (bytes, bytearray)):
        return obj.hex()
    if hasattr(obj, "to_dict") and callable(getattr(obj, "to_dict")):
        try:
            return obj.to_dict()
        except Exception:
            pass
    if hasattr(obj, "model_dump"):
        try:
            return obj.model_dump()
        except Exception:
            pass
    if hasattr(obj, "dict"):
        try:
            return obj.dict()
        except Exception:
            pass
    if isinstance(obj, (list, tuple)):
        return [prepare(item) for item in obj]
    if isinstance(obj, dict):
        return {k: prepare(v) for k, v in obj.items()}
    return obj


def _prepare_list(obj):
    # prepare() for an exact list: same result, without the attribute probes
    # a list never passes.
    out = []
    append = out.append
    for v in obj:
        t = type(v)
        if t is str or t is int or v is None or t is bool:
            append(v)
        elif t is float:
            append(None if v != v else (str(v) if v in _INFS else v))
        elif t is dict:
            append(_prepare_dict(v))
        elif t is list:
            append(_prepare_list(v))
        else:
            append(prepare(v))
    return out


def _prepare_dict(obj):
    out = {}
    for k, v in obj.items():
        t = type(v)
        if t is str or t is int or v is None or t is bool:
            out[k] = v
        elif t is float:
            out[k] = None if v != v else (str(v) if v in _INFS else v)
        elif t is dict:
            out[k] = _prepare_dict(v)
        elif t is list:
            out[k] = _prepare_list(v)
        else:
            out[k] = prepare(v)
    return out


_INFS = (float("inf"), float("-inf"))


def _error_structured(exc, obj):
    payload = _json_dumps({
        "error": "Serialization Error: %s" % (exc,),
        "original_type": str(type(obj)),
    })
    return '{"type": "object", "payload": ' + _encode_str(payload) + "}"


def structured(obj):
    """serialize_object_to_structured(obj) as a str."""
    return structured_bytes(obj).decode("utf-8")


def structured_bytes(obj):
    """serialize_object_to_structured(obj), UTF-8 encoded.

    The original checks the payload's size with payload.encode('utf-8'), which
    raises for lone surrogates and so turns them into the error fallback; the
    encode we need anyway for the frame reproduces that.
    """
    try:
        t = type(obj)
        # Fast paths for exact builtin types: same result as the general path.
        if t is str:
            kind = "string"
            payload = _encode_str(obj)
        elif t is dict:
            kind = "object"
            payload = _encode_payload(_prepare_dict(obj))
        elif t is int:
            kind = "integer"
            payload = _encode_payload(obj)
        elif t is list:
            kind = "array"
            payload = _encode_payload(_prepare_list(obj))
        elif obj is None:
            return b'{"type": "null", "payload": "null"}'
        elif t is bool:
            return (b'{"type": "boolean", "payload": "true"}' if obj
                    else b'{"type": "boolean", "payload": "false"}')
        else:
            kind = determine_type(obj)
            payload = _encode_payload(prepare(obj))
        s = '{"type": "' + kind + '", "payload": ' + _encode_str(payload) + "}"
        try:
            return s.encode("utf-8")
        except UnicodeEncodeError:
            payload.encode("utf-8")  # raises the error the original reports
            raise
    except Exception as exc:
        return _error_structured(exc, obj).encode("utf-8")


def convert_chunk(chunk):
    """AgentWebSocketHandler._convert_chunk_to_serializable."""
    if isinstance(chunk, (str, int, float, bool, type(None))):
        return chunk
    if isinstance(chunk, (list, tuple)):
        return [convert_chunk(item) for item in chunk]
    if isinstance(chunk, dict):
        return {k: convert_chunk(v) for k, v in chunk.items()}
    if hasattr(chunk, "dict") and callable(chunk.dict):
        try:
            return chunk.dict()
        except Exception:
            pass
    if hasattr(chunk, "model_dump") and callable(chunk.model_dump):
        try:
            return chunk.model_dump()
        except Exception:
            pass
    if hasattr(chunk, "__dict__"):
        try:
            return {k: convert_chunk(v) for k, v in chunk.__dict__.items()
                    if not k.startswith("_")}
        except Exception:
            pass
    try:
        chunk_str = str(chunk)
        if chunk_str and chunk_str != "<%s object at 0x" % type(chunk).__name__:
            return chunk_str
    except Exception:
        pass
    return {"type": type(chunk).__name__, "repr": repr(chunk)[:200]}


def chunk_bytes(chunk, number):
    """What the original's stream loop sends for the number-th chunk."""
    try:
        conv = convert_chunk(chunk)
    except Exception as conv_error:
        conv = {
            "chunk_number": number,
            "conversion_error": str(conv_error),
            "chunk_type": str(type(chunk)),
            "chunk_str": str(chunk)[:200],
        }
    return structured_bytes(conv)


def structured_chunk(chunk):
    """The structured string of a stream chunk (chunk conversion first)."""
    return chunk_bytes(chunk, 1).decode("utf-8")
