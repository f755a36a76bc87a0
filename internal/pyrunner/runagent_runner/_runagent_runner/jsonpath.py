"""The extractor: runagent.utils.response (to_dict + jsonpath_ng 1.7.0 first
match), with a small JSONPath subset compiled at INIT (compile_extractor)."""

import dataclasses
import json


def to_dict(obj):
    """runagent.utils.response.to_dict."""
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "model_dump"):
        try:
            return obj.model_dump()
        except Exception:
            return obj
    if hasattr(obj, "dict"):
        try:
            return obj.dict()
        except Exception:
            return obj
    if hasattr(obj, "__dataclass_fields__"):
        try:
            return dataclasses.asdict(obj)
        except Exception:
            return obj
    if hasattr(obj, "_asdict"):
        try:
            return obj._asdict()
        except Exception:
            return obj
    if hasattr(obj, "__dict__"):
        try:
            return obj.__dict__
        except Exception:
            return obj
    try:
        return json.loads(json.dumps(obj, default=str))
    except Exception:
        return obj


class JSONPathError(ValueError):
    pass


_NOT_SET = object()
_ID_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_@")
_ID_CHARS = _ID_START | frozenset("0123456789-")
_DIGITS = frozenset("0123456789")


def _tokenize(expr):
    """Tokens of jsonpath_ng's lexer: ('id', str), ('num', int), ('..',), or a
    one-character literal."""
    toks = []
    i, n = 0, len(expr)
    while i < n:
        ch = expr[i]
        if ch in " \t\n":
            i += 1
        elif expr.startswith("..", i):
            toks.append(("..", None))
            i += 2
        elif ch in _ID_START:
            j = i + 1
            while j < n and expr[j] in _ID_CHARS:
                j += 1
            word = expr[i:j]
            if word in ("where", "wherenot"):
                raise JSONPathError("the `%s` operator is not supported" % word)
            toks.append(("id", word))
            i = j
        elif ch in _DIGITS or (ch == "-" and i + 1 < n and expr[i + 1] in _DIGITS):
            j = i + 1
            while j < n and expr[j] in _DIGITS:
                j += 1
            toks.append(("num", int(expr[i:j])))
            i = j
        elif ch in "'\"":
            j = i + 1
            out = []
            while True:
                if j >= n:
                    raise JSONPathError("unterminated quoted name at position %d" % i)
                c = expr[j]
                if c == "\\":
                    if j + 1 >= n:
                        raise JSONPathError("unterminated quoted name at position %d" % i)
                    out.append(expr[j + 1])
                    j += 2
                elif c == ch:
                    j += 1
                    break
                else:
                    out.append(c)
                    j += 1
            toks.append(("id", "".join(out)))
            i = j
        elif ch in "$.[]*,:":
            toks.append((ch, None))
            i += 1
        elif ch in "()|&~`":
            raise JSONPathError("%r is not supported (only $, .name, ['name'], [n], "
                                "[*], [a:b], .*, ..name, [a,b])" % ch)
        else:
            raise JSONPathError("unexpected character %r at position %d" % (ch, i))
    return toks


def compile_jsonpath(expr):
    """Compile the supported subset of jsonpath_ng syntax into a list of steps.

    Steps: ("fields", names), ("all",), ("index", n), ("slice", a, b, c),
    ("desc", step). A path without a leading ``$`` starts at the root, as in
    jsonpath_ng.
    """
    if not isinstance(expr, str):
        raise JSONPathError("a JSONPath must be a string, not %s" % type(expr).__name__)
    toks = _tokenize(expr)
    if not toks:
        raise JSONPathError("empty JSONPath")
    steps = []
    pos = 0

    def peek(k=0):
        return toks[pos + k][0] if pos + k < len(toks) else None

    def bracket():
        # after '[': idx | '*' | fields | slice, then ']'
        nonlocal pos
        kind = peek()
        if kind == "*" and peek(1) == "]":
            pos += 2
            return ("slice", None, None, None)
        if kind == "id":
            names = [toks[pos][1]]
            pos += 1
            while peek() == ",":
                if peek(1) != "id":
                    raise JSONPathError("expected a name after ',' in %r" % expr)
                names.append(toks[pos + 1][1])
                pos += 2
            if peek() != "]":
                raise JSONPathError("expected ']' in %r" % expr)
            pos += 1
            return ("fields", tuple(names))
        if kind == "num" and peek(1) == "]":
            n = toks[pos][1]
            pos += 2
            return ("index", n)
        # slice: maybe_int ':' maybe_int [':' maybe_int]
        parts = [None]
        while True:
            k = peek()
            if k == "num":
                if parts[-1] is not None:
                    raise JSONPathError("bad slice in %r" % expr)
                parts[-1] = toks[pos][1]
                pos += 1
            elif k == ":":
                if len(parts) == 3:
                    raise JSONPathError("bad slice in %r" % expr)
                parts.append(None)
                pos += 1
            elif k == "]":
                pos += 1
                break
            else:
                raise JSONPathError("unsupported bracket expression in %r" % expr)
        if len(parts) == 1:
            raise JSONPathError("empty brackets in %r" % expr)
        return ("slice",) + tuple(parts) + (None,) * (3 - len(parts))

    def simple():
        # a name, a number used as a name, '*', or a bracket expression
        nonlocal pos
        kind = peek()
        if kind == "id":
            pos += 1
            return ("fields", (toks[pos - 1][1],))
        if kind == "num":
            pos += 1
            return ("fields", (str(toks[pos - 1][1]),))
        if kind == "*":
            pos += 1
            return ("all",)
        if kind == "[":
            pos += 1
            return bracket()
        raise JSONPathError("expected a name, '*' or '[' in %r" % expr)

    if peek() == "$":
        pos = 1
    else:
        steps.append(simple())
    while pos < len(toks):
        kind = peek()
        if kind == ".":
            pos += 1
            steps.append(simple())
        elif kind == "..":
            pos += 1
            steps.append(("desc", simple()))
        elif kind == "[":
            pos += 1
            steps.append(bracket())
        else:
            raise JSONPathError("unexpected %r in %r" % (toks[pos][1] if toks[pos][1] is not None
                                                         else kind, expr))
    return steps


def _find_step(step, value, out):
    """Append what jsonpath_ng's node for step finds in value to out."""
    op = step[0]
    if op == "fields":
        for name in step[1]:
            try:
                v = value.get(name, _NOT_SET)
            except (TypeError, AttributeError):
                continue
            if v is not _NOT_SET:
                out.append(v)
    elif op == "all":
        try:
            names = tuple(value.keys())
        except AttributeError:
            names = ()
        for name in names:
            try:
                v = value.get(name, _NOT_SET)
            except (TypeError, AttributeError):
                continue
            if v is not _NOT_SET:
                out.append(v)
    elif op == "index":
        i = step[1]
        if value and len(value) > i:
            out.append(value[i])
    elif op == "slice":
        if not value:
            return
        if isinstance(value, (dict, int, str)):
            value = [value]
        _, a, b, c = step
        if a is None and b is None and c is None:
            idx = range(0, len(value))
        else:
            idx = range(0, len(value))[a:b:c]
        for i in idx:
            out.append(value[i])
    else:  # desc
        right = step[1]

        def rec(v):
            _find_step(right, v, out)
            if isinstance(v, list):
                for item in v:
                    rec(item)
            elif isinstance(v, dict):
                for k in v.keys():
                    rec(v[k])
        rec(value)


def jsonpath_find(steps, data):
    """All matches of a compiled path, in jsonpath_ng's order."""
    cur = [data]
    for step in steps:
        nxt = []
        for v in cur:
            _find_step(step, v, nxt)
        cur = nxt
    return cur


def compile_extractor(extractor):
    """A function applying an extractor ({key: jsonpath} or [[key, jsonpath]]),
    or None when there is none."""
    if not extractor:
        return None
    if isinstance(extractor, dict):
        items = list(extractor.items())
    elif isinstance(extractor, list):
        items = []
        for pair in extractor:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise JSONPathError("extractor pairs must be [key, jsonpath]")
            items.append((pair[0], pair[1]))
    else:
        raise JSONPathError("extractor must be an object of key -> JSONPath")
    compiled = []
    for key, expr in items:
        if not isinstance(key, str):
            raise JSONPathError("extractor keys must be strings")
        try:
            compiled.append((key, compile_jsonpath(expr)))
        except JSONPathError as e:
            raise JSONPathError("extractor %r: invalid JSONPath %r: %s" % (key, expr, e))

    def extract(data):
        d = to_dict(data)
        res = {}
        for key, steps in compiled:
            m = jsonpath_find(steps, d)
            res[key] = m[0] if m else None
        return res
    return extract
