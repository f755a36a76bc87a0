"""Throughput benchmark of the Python runner (the runagent_runner folder) over a
socketpair.

    python3 bench_runner.py [--calls 200000] [--window 256] [--streams 4]
                            [--chunks 10000] [--threads 32] [--latency 3000]
                            [--startup 0] [--runner PATH]

Starts the runner as a subprocess (as the Go host does: fd 3 of a socketpair),
then measures
  * calls/s: --calls calls of a trivial sync function, --window in flight;
  * chunks/s: --streams concurrent calls of a sync generator of --chunks chunks;
  * latency: --latency sequential calls (one in flight) of the trivial sync
    function, and as many small sync-generator streams (time to the first
    CHUNK and to END); p50/p99 in microseconds;
  * start-up (--startup N, then nothing else): N runners started one after
    the other, the time from starting the interpreter to READY; p50/p90 in
    milliseconds.
--runner is the runner to start (default: the one beside this file; a folder
or, for an older runner, a file).
The client is deliberately cheap (pre-built frames, header-only parsing) but
shares the CPU with the runner, so the numbers are a lower bound.
"""

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "runagent_runner")
HDR = struct.Struct(">IBI")

AGENT = '''
def echo(message="hi"):
    return message


def numbers_stream(n=10000):
    for i in range(n):
        yield "token %d " % i
'''


def frame(kind, call, body=b""):
    return HDR.pack(len(body) + 5, kind, call) + body


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def frames(self):
        """Yield batches of (kind, call, body) as they arrive."""
        recv = self.sock.recv
        buf = self.buf
        while True:
            data = recv(1 << 20)
            if not data:
                return
            buf += data
            out = []
            pos = 0
            size = len(buf)
            while size - pos >= 9:
                n, kind, call = HDR.unpack_from(buf, pos)
                end = pos + 4 + n
                if end > size:
                    break
                out.append((kind, call, bytes(buf[pos + 9:end]) if kind != 12 else None))
                pos = end
            del buf[:pos]
            yield out


def start(agent_dir, threads, runner=RUNNER):
    host, child = socket.socketpair()
    fd = child.fileno()
    proc = subprocess.Popen([sys.executable, "-u", "-X", "utf8", runner, "--fd", str(fd)],
                            pass_fds=(fd,), cwd=agent_dir)
    child.close()
    init = {"agent_dir": agent_dir, "threads": threads, "env": {},
            "entrypoints": [{"tag": "echo", "file": "main.py", "module": "echo"},
                            {"tag": "numbers_stream", "file": "main.py", "module": "numbers_stream"}]}
    host.sendall(frame(1, 0, json.dumps(init).encode()))
    conn = Conn(host)
    frames = conn.frames()
    for batch in frames:
        for kind, call, body in batch:
            if kind == 10:
                ready = json.loads(body)
                assert not ready["errors"], ready
                return proc, host, frames
    raise SystemExit("runner did not answer INIT")


def cpu_seconds(pid):
    """User+system CPU time of a process (Linux /proc), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cpu_note(pid, before, n, unit):
    after = cpu_seconds(pid)
    if before is None or after is None:
        return ""
    return ", runner CPU %.1f us/%s" % ((after - before) * 1e6 / n, unit)


def bench_calls(host, frames, total, window):
    body = json.dumps({"tag": "echo", "args": ["hello"], "kwargs": {}}).encode()
    pre = [frame(2, i, body) for i in range(1, total + 1)]
    sent = min(window, total)
    done = 0
    t0 = time.perf_counter()
    host.sendall(b"".join(pre[:sent]))
    for batch in frames:
        k = 0
        for kind, call, b in batch:
            if kind == 11:
                k += 1
                if call == 1:
                    assert b == b'{"type": "string", "payload": "\\"hello\\""}', b
            elif kind == 14:
                raise SystemExit("call failed: %r" % b)
        done += k
        if sent < total and k:
            nxt = min(total, sent + k)
            host.sendall(b"".join(pre[sent:nxt]))
            sent = nxt
        if done >= total:
            break
    return total / (time.perf_counter() - t0)


def bench_stream(host, frames, streams, chunks, first_id):
    body = json.dumps({"tag": "numbers_stream", "args": [chunks], "kwargs": {}}).encode()
    t0 = time.perf_counter()
    host.sendall(b"".join(frame(2, first_id + i, body) for i in range(streams)))
    got = 0
    ended = 0
    last_end = None
    for batch in frames:
        for kind, call, b in batch:
            if kind == 12:
                got += 1
            elif kind == 13:
                ended += 1
                last_end = json.loads(b)
            elif kind == 14:
                raise SystemExit("stream failed: %r" % b)
        if ended == streams:
            break
    assert got == streams * chunks, (got, streams * chunks)
    assert last_end == {"chunks": chunks}, last_end
    return got / (time.perf_counter() - t0)


def _pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] * 1e6


def bench_latency(host, frames, n, first_id):
    """Sequential round trips: one call (or one small stream) in flight."""
    call = json.dumps({"tag": "echo", "args": ["hello"], "kwargs": {}}).encode()
    stream = json.dumps({"tag": "numbers_stream", "args": [8], "kwargs": {}}).encode()
    clock = time.perf_counter
    rt, first, whole = [], [], []
    cid = first_id
    for i in range(n):
        cid += 1
        f = frame(2, cid, call)
        t0 = clock()
        host.sendall(f)
        done = False
        for batch in frames:
            for kind, call_id, b in batch:
                if call_id == cid and kind in (11, 14):
                    assert kind == 11, b
                    done = True
            if done:
                break
        rt.append(clock() - t0)
    for i in range(n):
        cid += 1
        f = frame(2, cid, stream)
        t0 = clock()
        host.sendall(f)
        t1 = None
        done = False
        for batch in frames:
            for kind, call_id, b in batch:
                if call_id != cid:
                    continue
                if kind == 12 and t1 is None:
                    t1 = clock()
                elif kind in (13, 14):
                    assert kind == 13, b
                    done = True
            if done:
                break
        first.append(t1 - t0)
        whole.append(clock() - t0)
    return rt, first, whole


def bench_startup(agent_dir, n, runner):
    """Start n runners one after the other: interpreter start to READY, and
    the CPU time each runner used in all (start, INIT, exit)."""
    import resource
    times, cpu = [], []
    for _ in range(n):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc, host, _ = start(agent_dir, 4, runner)
        times.append(time.perf_counter() - t0)
        host.close()
        proc.wait(timeout=10)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return times, cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200000)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--chunks", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency", type=int, default=3000,
                    help="sequential calls and small streams for the latency test (0: skip)")
    ap.add_argument("--only-latency", action="store_true")
    ap.add_argument("--startup", type=int, default=0,
                    help="only measure start-up: this many runners, one after the other")
    ap.add_argument("--runner", default=RUNNER, help="the runner to start")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "main.py"), "w") as f:
            f.write(AGENT)
        if a.startup > 0:
            bench_startup(d, 3, a.runner)  # warm-up (page cache, bytecode)
            ts, cpu = bench_startup(d, a.startup, a.runner)
            ts.sort()
            cpu.sort()
            print("start-up: p50 %.1f ms p90 %.1f ms min %.1f ms, runner CPU p50 %.1f ms  "
                  "(%d runners, interpreter start to READY)"
                  % (ts[len(ts) // 2] * 1e3, ts[len(ts) * 9 // 10] * 1e3, ts[0] * 1e3,
                     cpu[len(cpu) // 2] * 1e3, a.startup))
            return
        proc, host, frames = start(d, a.threads, a.runner)
        try:
            bench_calls(host, frames, min(a.calls, 5000), a.window)  # warm-up
            if a.latency > 0:
                bench_latency(host, frames, 200, 30_000_000)  # warm-up
                rt, first, whole = bench_latency(host, frames, a.latency, 40_000_000)
                print("latency: call p50 %.0f us p99 %.0f us; stream first chunk p50 %.0f us "
                      "p99 %.0f us, END p50 %.0f us  (%d sequential each)"
                      % (_pct(rt, 50), _pct(rt, 99), _pct(first, 50), _pct(first, 99),
                         _pct(whole, 50), a.latency))
            if a.only_latency:
                return
            for r in range(a.rounds):
                c0 = cpu_seconds(proc.pid)
                cps = bench_calls(host, frames, a.calls, a.window)
                print("calls:  %8.0f calls/s   (%d trivial sync calls, %d in flight, threads=%d%s)"
                      % (cps, a.calls, a.window, a.threads, cpu_note(proc.pid, c0, a.calls, "call")))
            for r in range(a.rounds):
                c0 = cpu_seconds(proc.pid)
                chs = bench_stream(host, frames, a.streams, a.chunks, 10_000_000 + r * 1000)
                print("stream: %8.0f chunks/s  (%d concurrent sync generators x %d chunks%s)"
                      % (chs, a.streams, a.chunks,
                         cpu_note(proc.pid, c0, a.streams * a.chunks, "chunk")))
            c0 = cpu_seconds(proc.pid)
            chs = bench_stream(host, frames, 1, a.chunks, 20_000_000)
            print("stream: %8.0f chunks/s  (1 sync generator x %d chunks%s)"
                  % (chs, a.chunks, cpu_note(proc.pid, c0, a.chunks, "chunk")))
        finally:
            host.close()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
