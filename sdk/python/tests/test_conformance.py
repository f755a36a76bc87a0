"""The language-neutral conformance cases (testdata/conformance/cases.json,
docs/sdk-contract.md), each run through the sync and the async client."""
import asyncio
import math

import pytest

import runagent_client as ra
from conftest import CONFORMANCE, conformance_suite

pytestmark = pytest.mark.e2e

SUITE = conformance_suite()
CASES = SUITE["cases"] if SUITE else []


def generate(spec):
    if "repeat" in spec:
        return spec["repeat"] * spec["count"]
    if "nest" in spec:
        v = "core"
        for _ in range(spec["nest"]):
            v = [v]
        return v
    raise AssertionError("unknown generator %r" % spec)


def inputs(case):
    args = list(case.get("args") or [])
    kwargs = dict(case.get("kwargs") or {})
    gen = case.get("generate") or {}
    if "args" in gen:
        args = [generate(g) for g in gen["args"]]
    if "kwargs" in gen:
        kwargs = {k: generate(g) for k, g in gen["kwargs"].items()}
    return args, kwargs


def same(got, want):
    if isinstance(want, float) or isinstance(got, float):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and math.isclose(got, want, rel_tol=1e-12)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(same(g, w) for g, w in zip(got, want))
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    return type(got) is type(want) and got == want


def check(case, args, kwargs, value=None, chunks=None, error=None):
    exp = case["expect"]
    if "error" in exp:
        assert error is not None, "expected %s, got value %r chunks %r" % (exp["error"], value, chunks)
        assert isinstance(error, ra.RunAgentError)
        assert error.code == exp["error"]["code"], error
        assert type(error) is ra.errors.ERROR_CLASSES[error.code]
        if "message_contains" in exp["error"]:
            assert exp["error"]["message_contains"] in error.message
    elif error is not None:
        raise error
    if "value" in exp:
        assert same(value, exp["value"]), value
    if exp.get("echo_args"):
        assert same(value, {"args": args, "kwargs": kwargs})
    if "chunks" in exp:
        assert same(chunks, exp["chunks"]), chunks
    if "chunk_count" in exp:
        assert chunks is not None and len(chunks) == exp["chunk_count"]


def call_of(case):
    return case.get("call") or ("run_stream" if case["tag"].endswith("_stream") else "run")


@pytest.mark.skipif(not CASES, reason="no conformance cases at %s" % CONFORMANCE)
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_sync(case, showcase):
    args, kwargs = inputs(case)
    value = chunks = error = None
    with ra.RunAgentClient(showcase.agent_id, case["tag"], **showcase.client_args()) as c:
        try:
            if call_of(case) == "run":
                value = c.run(*args, **kwargs)
            else:
                chunks = []
                for x in c.run_stream(*args, **kwargs):
                    assert not isinstance(x, ra.ChunkError), x
                    chunks.append(x)
        except ra.RunAgentError as e:
            error = e
    check(case, args, kwargs, value, chunks, error)


@pytest.mark.skipif(not CASES, reason="no conformance cases at %s" % CONFORMANCE)
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_async(case, showcase):
    args, kwargs = inputs(case)

    async def main():
        value = chunks = error = None
        async with ra.AsyncRunAgentClient(showcase.agent_id, case["tag"], **showcase.client_args()) as c:
            try:
                if call_of(case) == "run":
                    value = await c.run(*args, **kwargs)
                else:
                    chunks = []
                    async for x in c.run_stream(*args, **kwargs):
                        assert not isinstance(x, ra.ChunkError), x
                        chunks.append(x)
            except ra.RunAgentError as e:
                error = e
        return value, chunks, error
    check(case, args, kwargs, *asyncio.run(main()))
