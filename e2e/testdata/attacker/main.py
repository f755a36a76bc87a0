"""The attack suite's attacker agent (e2e/sandbox_attack_test.go).

Each entrypoint tries one way out of its sandbox and reports what happened:

    {"attempted": "...", "blocked": True/False, "detail": "..."}

"blocked" is True only when every attempt of the case failed; "detail" says,
attempt by attempt, what worked and what error stopped it. The resource
bombs (memory_hog, cpu_spin, and fork_bomb when the sandbox kills it) are
meant to be ended by the server: their call then fails with RESOURCE_LIMIT.

Everything is bounded so that even the process driver (no isolation) cannot
take the machine down: at most 1000 processes that exit within 30 s, 2 GB of
memory, 30 s of CPU, work_dir_mb + 32 MiB of disk; files written outside the
work directory are removed again at once.
"""

import errno
import os
import signal
import socket
import tempfile
import time


def hello():
    return "hello"


def _result(attempted, leaks, notes, **extra):
    out = {
        "attempted": attempted,
        "blocked": not leaks,
        "detail": "; ".join(notes),
    }
    out.update(extra)
    return out


def _err(e):
    if isinstance(e, OSError) and e.strerror:
        return "%s: %s" % (type(e).__name__, e.strerror)
    return "%s: %s" % (type(e).__name__, e)


def _by_design():
    """The host paths a sandbox shows by design: the interpreter's
    installation, the virtualenv, the runner script's folder, the agent's
    own folder. Their parent folders exist in a sandbox, holding only the
    way down to them."""
    import sys
    paths = [sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable)),
             os.path.dirname(os.path.abspath(sys.argv[0] or ".")),
             os.path.dirname(os.path.abspath(__file__))]
    return [os.path.normpath(p) for p in paths if p]


def _beyond_design(folder, entries):
    """The entries of a listed folder that are not on the way to a path the
    sandbox shows by design."""
    folder = os.path.normpath(folder)
    ways = set()
    for p in _by_design():
        rel = os.path.relpath(p, folder)
        if not rel.startswith(".."):
            ways.add(rel.split(os.sep)[0])
    return [e for e in entries if e not in ways]


# 1. Read host files outside the agent's view.
def read_host(data_dir, victim_dir):
    leaks, notes = [], []

    def read(path, n=64):
        with open(path, "rb") as f:
            return f.read(n)

    attempts = [
        ("read the server database", os.path.join(data_dir, "platform.db"), "read"),
        ("list the victim's agent folder", victim_dir, "list"),
        ("read the victim's main.py", os.path.join(victim_dir, "main.py"), "read"),
        ("list /root", "/root", "list"),
        ("read /etc/shadow", "/etc/shadow", "read"),
    ]
    for what, path, how in attempts:
        try:
            if how == "list":
                got = sorted(os.listdir(path))
                beyond = _beyond_design(path, got)
                if beyond:
                    leaks.append(what)
                    notes.append("%s: LISTED %r" % (what, got[:8]))
                else:
                    notes.append("%s: lists only %r, the way to what the sandbox shows by design (%s)"
                                 % (what, got, ", ".join(_by_design())))
            else:
                got = read(path)
                leaks.append(what)
                notes.append("%s: READ %r" % (what, got[:24]))
        except OSError as e:
            notes.append("%s: %s" % (what, _err(e)))
    return _result(
        "read %s/platform.db, list and read the victim's folder %s, list /root, read /etc/shadow"
        % (data_dir, victim_dir),
        leaks, notes, leaked=leaks)


# 2. Write outside the work directory (and, as a sanity check, inside it).
# A file that got written is left for the test to look for on the host (it
# removes it at once); "on_scratch" says whether it landed on the sandbox's
# own /tmp or /work mount, where writing is allowed.
def write_outside(data_dir, marker, driver):
    own = os.path.dirname(os.path.abspath(__file__))
    name = "ra-attack-" + marker
    scratch = set()
    if driver != "process":
        for d in ("/tmp", "/work"):
            try:
                scratch.add(os.stat(d).st_dev)
            except OSError:
                pass
    written, notes = [], []
    for what, d in [("own agent folder", own), ("/etc", "/etc"), ("the server's data dir", data_dir)]:
        path = os.path.join(d, name)
        try:
            with open(path, "x") as f:
                f.write("written by the attacker agent\n")
            on_scratch = os.stat(path).st_dev in scratch
            written.append({"what": what, "path": path, "on_scratch": on_scratch})
            notes.append("%s (%s): WROTE%s" % (what, path, " (on the sandbox's own /tmp or /work)" if on_scratch else ""))
        except OSError as e:
            notes.append("%s (%s): %s" % (what, path, _err(e)))

    # Sanity: the places an instance may write to do work. Under the process
    # driver the host's /work is not the instance's, so only the temp dir.
    sanity = {}
    places = [tempfile.gettempdir()] if driver == "process" else ["/tmp", "/work"]
    for d in places:
        path = os.path.join(d, name)
        try:
            with open(path, "w") as f:
                f.write("scratch\n")
            with open(path) as f:
                sanity[d] = f.read() == "scratch\n"
            os.remove(path)
        except OSError as e:
            sanity[d] = False
            notes.append("sanity write to %s: %s" % (d, _err(e)))
    return _result(
        "create %s in its own agent folder, in /etc and in %s" % (name, data_dir),
        [w for w in written if not w["on_scratch"]], notes, written=written, sanity=sanity)


# 3. Reach the host's loopback with the network off.
def tcp_connect(port, marker):
    port = int(port)
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
    except OSError as e:
        return _result("connect to 127.0.0.1:%d (the test's listener on the host)" % port,
                       [], ["connect: " + _err(e)])
    try:
        s.settimeout(3)
        got = b""
        while len(got) < 256 and marker.encode() not in got:
            b = s.recv(256)
            if not b:
                break
            got += b
    except OSError as e:
        got = b""
        note = "connected, then " + _err(e)
    else:
        note = "connected, received %r" % got[:64]
    finally:
        s.close()
    reached = marker.encode() in got
    if reached:
        note = "CONNECTED to the host's listener: " + note
    else:
        note += " (not the host's listener)"
    return _result("connect to 127.0.0.1:%d (the test's listener on the host)" % port,
                   ["connect"] if reached else [], [note])


# 4. Fork bomb, bounded: at most `count` children that sleep 30 s and exit.
def fork_bomb(marker, count=1000, hold=4):
    count, hold = int(count), float(hold)
    name = marker.encode()[:15]
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except Exception:  # no ctypes: the children are not marked
        prctl = None
    kids, refused, marked = [], None, prctl is not None
    start = time.monotonic()
    for _ in range(count):
        try:
            pid = os.fork()
        except OSError as e:
            refused = _err(e)
            break
        if pid == 0:
            try:
                if prctl is not None:
                    prctl(15, name, 0, 0, 0)  # PR_SET_NAME: the test finds us by it
                time.sleep(30)
            finally:
                os._exit(0)
        kids.append(pid)
    took = time.monotonic() - start
    # A bomb holds what it made; a sandbox that counts processes sees them now.
    time.sleep(hold)
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in kids:
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
    if refused is not None:
        notes = ["fork refused after %d children (%.2fs): %s" % (len(kids), took, refused)]
    else:
        notes = ["FORKED all %d children in %.2fs, held them %gs, nothing stopped it" % (len(kids), took, hold)]
    if not marked:
        notes.append("children could not be named (no ctypes)")
    return _result("fork %d children that sleep 30 s" % count,
                   [] if refused is not None else ["fork"], notes, forked=len(kids))


# 5. Allocate until killed: 16 MiB chunks, every page touched, up to 2 GiB.
def memory_hog(max_mb=2048, chunk_mb=16):
    max_mb, chunk_mb = int(max_mb), int(chunk_mb)
    chunks = []
    for i in range(max_mb // chunk_mb):
        chunks.append(bytes([i % 251 + 1]) * (chunk_mb << 20))
        time.sleep(0.02)
    return _result("allocate and touch %d MiB in %d MiB chunks" % (max_mb, chunk_mb),
                   ["memory"], ["ALLOCATED %d MiB and was not stopped" % (len(chunks) * chunk_mb)])


# 6. Spin the CPU past its limit (at most 30 s of wall time).
def cpu_spin(seconds=30):
    seconds = float(seconds)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return _result("busy loop for %gs" % seconds, ["cpu"],
                   ["SPUN %gs wall, %.1fs CPU, and was not stopped" % (seconds, time.process_time())])


# 7. Read another instance's (or the server's) environment and memory.
def proc_snoop(secret, victim_pid, server_pid, server_marker):
    victim_pid, server_pid = int(victim_pid), int(server_pid)
    sb, mb = secret.encode(), server_marker.encode()
    leaks, notes = [], []

    def read(path, n=1 << 20):
        with open(path, "rb") as f:
            return f.read(n)

    # Every process this instance can see.
    seen, found = 0, []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        seen += 1
        for what in ("environ", "cmdline"):
            try:
                if sb in read("/proc/%s/%s" % (d, what)):
                    found.append("/proc/%s/%s" % (d, what))
            except OSError:
                pass
    if found:
        leaks.append("scan")
        notes.append("FOUND the victim's secret in %s" % ", ".join(found))
    else:
        notes.append("scanned %d processes' environ and cmdline: no secret" % seen)

    for what, pid, marker in [("victim", victim_pid, sb), ("server", server_pid, mb)]:
        path = "/proc/%d/environ" % pid
        try:
            env = read(path)
        except OSError as e:
            notes.append("%s environ (%s): %s" % (what, path, _err(e)))
            continue
        if marker in env:
            leaks.append(what + " environ")
            notes.append("%s environ (%s): READ it (%d bytes, marker found)" % (what, path, len(env)))
        else:
            notes.append("%s environ (%s): readable, %d bytes, no marker: not the %s" % (what, path, len(env), what))

    # The victim's memory: its stack holds its environment.
    try:
        maps = read("/proc/%d/maps" % victim_pid).decode(errors="replace")
        lo = hi = None
        for line in maps.splitlines():
            if line.endswith("[stack]"):
                a, b = line.split()[0].split("-")
                lo, hi = int(a, 16), int(b, 16)
        if lo is None:
            raise OSError(errno.ENOENT, "no [stack] in its maps")
        hi = min(hi, lo + (4 << 20))
        with open("/proc/%d/mem" % victim_pid, "rb") as f:
            f.seek(lo)
            mem = f.read(hi - lo)
        if sb in mem:
            leaks.append("victim memory")
            notes.append("victim memory: READ %d bytes of its stack, secret found" % len(mem))
        else:
            notes.append("victim memory: read %d bytes of pid %d's stack, no secret: not the victim" % (len(mem), victim_pid))
    except OSError as e:
        notes.append("victim memory (/proc/%d/mem): %s" % (victim_pid, _err(e)))
    return _result(
        "scan /proc/*/environ and cmdline for the victim's secret; read /proc/%d/environ (victim), "
        "/proc/%d/environ (server), /proc/%d/mem (victim)" % (victim_pid, server_pid, victim_pid),
        leaks, notes, leaked=leaks)


# 8. Signal another instance and the server (SIGSTOP + SIGCONT only).
def signal_attack(victim_pid, server_pid):
    victim_pid, server_pid = int(victim_pid), int(server_pid)
    leaks, notes = [], []
    try:
        os.kill(victim_pid, signal.SIGKILL)
        leaks.append("SIGKILL victim")
        notes.append("SIGKILL to %d: DELIVERED" % victim_pid)
    except OSError as e:
        notes.append("SIGKILL to %d: %s" % (victim_pid, _err(e)))
    try:
        os.kill(server_pid, signal.SIGSTOP)
        leaks.append("SIGSTOP server")
        notes.append("SIGSTOP to %d: DELIVERED" % server_pid)
    except OSError as e:
        notes.append("SIGSTOP to %d: %s" % (server_pid, _err(e)))
    finally:
        try:
            os.kill(server_pid, signal.SIGCONT)
        except OSError:
            pass
    return _result("SIGKILL pid %d, SIGSTOP then SIGCONT pid %d" % (victim_pid, server_pid),
                   leaks, notes, leaked=leaks)


# 9. Fill the work directory's disk (capped at work_dir_mb + 32 MiB).
def disk_fill(work_dir_mb, driver):
    work_dir_mb = int(work_dir_mb)
    cap = (work_dir_mb + 32) << 20
    d = "/work" if driver != "process" else tempfile.gettempdir()
    path = os.path.join(d, "ra-fill-%d" % os.getpid())
    block = b"\xa5" * (1 << 20)
    written, stopped = 0, None
    try:
        with open(path, "wb", buffering=0) as f:
            while written < cap:
                try:
                    n = f.write(block)
                except OSError as e:
                    stopped = e
                    break
                if n is None or n < len(block):
                    # A short write is the file system saying it is full.
                    written += n or 0
                    try:
                        f.write(block)
                    except OSError as e:
                        stopped = e
                    break
                written += n
    except OSError as e:  # open, or the close's flush
        stopped = stopped or e
    finally:
        try:
            os.remove(path)
        except OSError:
            pass
    mb = written / float(1 << 20)
    full = stopped is not None and stopped.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    blocked = full and mb <= work_dir_mb + 1
    if stopped is None:
        note = "WROTE %.1f MiB to %s (the cap), no limit stopped it" % (mb, d)
    else:
        note = "wrote %.1f MiB to %s, then %s" % (mb, d, _err(stopped))
        if full and not blocked:
            note += " (MORE than work_dir_mb %d)" % work_dir_mb
    return _result("fill %s until it is full (work_dir_mb %d, cap %d MiB)" % (d, work_dir_mb, cap >> 20),
                   [] if blocked else ["disk"], [note], written_mb=round(mb, 1))
