"""Framing: the frame header, the stream to the host (a socket, or a
character device in a microVM), the Writer every thread sends through and
the Reader the thread holding the reading role reads with
(docs/runner-protocol.md, Framing and Threading)."""

import json
import os
import select
import socket
import struct
import threading

PROTOCOL = 1
MAX_FRAME = 256 << 20

# Frame kinds, host -> runner.
K_INIT, K_CALL, K_CANCEL, K_PING = 1, 2, 3, 4
# RESUME: the instance was restored from a snapshot taken after READY (the
# microvm sandbox); state every copy of the snapshot shares is made its own.
K_RESUME = 5
# CREDIT: the host took some of a stream's chunks; the stream may send that
# many more (flow control, see calls.set_flow and Call.take_credit).
K_CREDIT = 6
# Frame kinds, runner -> host.
K_READY, K_RESULT, K_CHUNK, K_END, K_ERROR, K_CHUNK_ERROR, K_LOG, K_PONG = (
    10, 11, 12, 13, 14, 15, 16, 17)

_HEADER = struct.Struct(">IBI")
pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from

_json_dumps = json.dumps  # ASCII output: always encodable


# ---------------------------------------------------------------------------
# Frame output: any thread queues frames; the writer thread sends them.
# ---------------------------------------------------------------------------

class Writer:
    """Frames from any thread reach the socket in one of two ways:

    * send_now (final frames, PONG, a stream's first chunk): when no other
      thread is writing, the producing thread writes itself, together with
      anything queued, in one non-blocking send; no other thread is woken.
      What the socket does not take at once goes to the front of the queue
      for the writer thread, so a producer never blocks on a slow host.
    * send (chunks after the first, LOGs) and send_now when another thread is
      writing: the frame goes to a list and a writer thread sends whatever
      has accumulated in one sendall, so a busy runner makes few, large
      writes. (The module-level send_now also queues while sync calls wait
      in the pool.)

    Frames of one call keep their order: send_now writes only while holding
    the write lock, and everything queued before it goes first."""

    HIGH_WATER = 4096  # queued frames past which producers send themselves

    def __init__(self, sock):
        self.sock = sock
        self.pending = []
        self.qlock = threading.Lock()   # guards pending
        self.wlock = threading.Lock()   # held while sending
        self.wake = threading.Lock()    # released to wake the writer thread
        self.wake.acquire()
        t = threading.Thread(target=self._run, name="runagent-writer", daemon=True)
        t.start()

    def send(self, kind, call, body):
        self.send_frame(pack_header(len(body) + 5, kind, call) + body)

    def send_now(self, kind, call, body):
        frame = pack_header(len(body) + 5, kind, call) + body
        wlock = self.wlock
        if not wlock.acquire(False):
            # another thread is writing: it (or the writer thread) sends ours
            self.send_frame(frame)
            return
        try:
            with self.qlock:
                batch = self.pending
                if batch:
                    self.pending = []
                    batch.append(frame)
                    data = b"".join(batch)
                else:
                    data = frame
            try:
                sent = _send_nowait(self.sock, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                os._exit(0)  # the host is gone
            if sent < len(data):
                # the socket is full: the writer thread sends the rest first
                with self.qlock:
                    self.pending.insert(0, data[sent:])
                try:
                    self.wake.release()
                except RuntimeError:
                    pass
        finally:
            wlock.release()

    def send_frame(self, frame):
        with self.qlock:
            pending = self.pending
            pending.append(frame)
            n = len(pending)
        if n == 1:
            # pending was empty: the writer may be asleep
            try:
                self.wake.release()
            except RuntimeError:
                pass  # already awake
        elif n > self.HIGH_WATER:
            self.flush()  # back-pressure: wait for the socket ourselves

    def flush(self):
        with self.wlock:
            self._drain()

    def _drain(self):
        qlock = self.qlock
        sendall = self.sock.sendall
        try:
            while True:
                with qlock:
                    batch = self.pending
                    if not batch:
                        return
                    self.pending = []
                sendall(batch[0] if len(batch) == 1 else b"".join(batch))
        except OSError:
            os._exit(0)  # the host is gone

    def _run(self):
        wake = self.wake
        wlock = self.wlock
        while True:
            wake.acquire()
            with wlock:
                self._drain()


_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def _send_nowait(sock, data):
    if _MSG_DONTWAIT:
        return sock.send(data, _MSG_DONTWAIT)
    sock.sendall(data)  # no non-blocking flag on this platform
    return len(data)


_writer = None
_backlog = ()  # the pool's pending calls: while there are some, frames are queued


def start_writer(sock):
    """Make the Writer (and its thread) the send functions use."""
    global _writer
    _writer = Writer(sock)
    return _writer


def set_backlog(pending):
    """pending is the pool's waiting calls: while there are some, send_now
    queues its frame for the writer thread."""
    global _backlog
    _backlog = pending


def flush():
    """Send everything queued, waiting for the socket."""
    _writer.flush()


def send(kind, call, body):
    _writer.send(kind, call, body)


def send_now(kind, call, body):
    """A frame someone waits for (final frame, PONG, first chunk): written at
    once by this thread unless sync calls wait in the pool. Under such a
    backlog the writer thread's batching is cheaper (per-call sends made the
    runner alone about half as fast at 256 calls in flight: the GIL bounced between
    the thread sending and the one reading)."""
    if _backlog:
        _writer.send(kind, call, body)
    else:
        _writer.send_now(kind, call, body)


def send_json(kind, call, obj):
    _writer.send(kind, call, _json_dumps(obj).encode("ascii"))


def send_json_now(kind, call, obj):
    send_now(kind, call, _json_dumps(obj).encode("ascii"))


# ---------------------------------------------------------------------------
# Reading frames
# ---------------------------------------------------------------------------

def _parse_frames(src, out):
    """Append the complete frames at the start of src to out; return how many
    bytes they took."""
    pos = 0
    size = len(src)
    unpack = _unpack_header
    while size - pos >= 9:
        n, kind, cid = unpack(src, pos)
        if n < 5 or n > MAX_FRAME:
            os.write(2, ("runagent runner: bad frame length %d, exiting\n" % n).encode())
            os._exit(2)
        end = pos + 4 + n
        if end > size:
            break
        out.append((kind, cid, src[pos + 9:end]))
        pos = end
    return pos


class Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()  # bytes not yet handed out
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            self._readable = poller.poll
        else:
            self._readable = lambda ms: select.select([sock], [], [], ms / 1000.0)[0]

    def read(self, timeout=None):
        """The next frames as a list of (kind, call, body), waiting for at
        least one; None at the end of the stream; [] when timeout (ms) passed
        with nothing to read. Only the thread holding the reading role calls
        it."""
        buf = self.buf
        if buf:
            out = []
            del buf[:_parse_frames(buf, out)]
            if out:
                return out
        recv = self.sock.recv
        while True:
            if timeout is not None:
                try:
                    if not self._readable(timeout):
                        return []
                except InterruptedError:
                    continue
            try:
                data = recv(1 << 18)
            except InterruptedError:
                continue
            except OSError:
                return None
            if not data:
                return None
            out = []
            if buf:
                buf += data
                del buf[:_parse_frames(buf, out)]
            else:
                pos = _parse_frames(data, out)
                if pos < len(data):
                    buf += data[pos:]
            if out:
                return out



# ---------------------------------------------------------------------------
# The stream to the host
# ---------------------------------------------------------------------------

class _DeviceStream:
    """The channel as a character device (a virtio serial port in a
    microVM) behind the few socket methods the runner uses."""

    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd

    def recv(self, n):
        return os.read(self.fd, n)

    def send(self, data, flags=0):
        return os.write(self.fd, data)

    def sendall(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def set_inheritable(self, v):
        os.set_inheritable(self.fd, v)

    def setblocking(self, v):
        os.set_blocking(self.fd, v)


def open_stream(argv):
    """The stream to the host named by the command line (--fd N or
    --connect unix:/path | tcp:host:port)."""
    fd = None
    target = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--fd" and i + 1 < len(argv):
            fd = int(argv[i + 1])
            i += 2
        elif a.startswith("--fd="):
            fd = int(a[5:])
            i += 1
        elif a == "--connect" and i + 1 < len(argv):
            target = argv[i + 1]
            i += 2
        elif a.startswith("--connect="):
            target = a[10:]
            i += 1
        else:
            raise SystemExit("runagent runner: unknown argument %r\n"
                             "usage: runagent_runner --fd N | --connect unix:/path" % a)
    if fd == 0:
        # The channel came in as standard input (runsc passes only stdio):
        # move it off fd 0, so that an agent reading stdin reads nothing
        # rather than protocol frames.
        fd = os.dup(0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    if fd is not None:
        import stat
        if stat.S_ISCHR(os.fstat(fd).st_mode):
            sock = _DeviceStream(fd)
        else:
            sock = socket.socket(fileno=fd)
    elif target is not None and target.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(target[5:])
    elif target is not None and target.startswith("tcp:"):
        host, _, port = target[4:].rpartition(":")
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        raise SystemExit("usage: runagent_runner --fd N | --connect unix:/path")
    sock.set_inheritable(False)  # agent subprocesses must not hold the stream
    sock.setblocking(True)
    return sock

