"""runagent microVM guest supervisor: PID 1 of the guest, as root.

The initramfs (init.sh) mounts the disks and file systems and hands over to
this script. It talks to the host over the "ra.control" virtio serial port,
one JSON object per line:

    guest -> host  {"op": "hello"}                       booted, waiting for start
    host -> guest  {"op": "start", "argv": [...], "env": [...], "cwd": "/agent",
                    "uid": 1000, "memory": bytes, "pids": n, "cpus": float,
                    "mounts": ["/agent/memory", ...]}   a user's persistent folders
    guest -> host  {"op": "started", "pid": n}
    host -> guest  {"op": "usage"}
    guest -> host  {"op": "usage", "memory": bytes, "cpu_usec": n, "tasks": n, "limit": ""}
    host -> guest  {"op": "quiesce"}                     before a snapshot is saved
    guest -> host  {"op": "quiesced"}
    host -> guest  {"op": "resume", "seed": hex, "time_ns": n}   after a snapshot restore
    guest -> host  {"op": "resumed"}
    guest -> host  {"op": "exit", "code": n, "signal": "SIGKILL", "limit": "memory"}
    guest -> host  {"op": "error", "message": "..."}

It starts the runner once, unprivileged (uid 1000, no capabilities) in a
cgroup that holds the agent's memory, process and CPU limits, with the
"ra.channel" port as its fd 3 and "ra.stdout"/"ra.stderr" as its output. It
stays root for the two things only root may do after a restore: reseed the
kernel's random generator and set the clock.
"""

import ctypes
import json
import os
import select
import signal
import struct
import sys
import time

CGROUP = "/sys/fs/cgroup/agent"
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207


def log(msg):
    try:
        os.write(2, ("runagent guest: %s\n" % msg).encode())
    except OSError:
        pass


def find_port(name, timeout=10.0):
    """The /dev node of the virtio serial port the host named."""
    end = time.monotonic() + timeout
    while True:
        try:
            for d in os.listdir("/sys/class/virtio-ports"):
                try:
                    with open("/sys/class/virtio-ports/%s/name" % d) as f:
                        if f.read().strip() == name:
                            return "/dev/" + d
                except OSError:
                    pass
        except OSError:
            pass
        if time.monotonic() > end:
            raise RuntimeError("no virtio port named %s" % name)
        time.sleep(0.005)


class Control:
    def __init__(self, fd):
        self.fd = fd
        self.buf = b""

    def send(self, **msg):
        data = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def read_lines(self):
        """The complete lines read now; None when the host is gone."""
        data = os.read(self.fd, 65536)
        if not data:
            return None
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        out = []
        for line in lines:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    log("bad control line %r" % line[:80])
        return out


def cg_write(name, value):
    with open(os.path.join(CGROUP, name), "w") as f:
        f.write(str(value))


def cg_read(name):
    try:
        with open(os.path.join(CGROUP, name)) as f:
            return f.read()
    except OSError:
        return ""


def cg_field(name, key):
    for line in cg_read(name).splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            try:
                return int(v)
            except ValueError:
                return 0
    return 0


CPU_PERIOD_USEC = 100000


def make_cgroup(memory, pids, cpus):
    with open("/sys/fs/cgroup/cgroup.subtree_control", "w") as f:
        f.write("+memory +pids +cpu" if cpus else "+memory +pids")
    os.makedirs(CGROUP, exist_ok=True)
    if cpus:
        # A share of the vCPUs (the host gives whole ones): "quota period".
        cg_write("cpu.max", "%d %d" % (max(1000, int(cpus * CPU_PERIOD_USEC)), CPU_PERIOD_USEC))
    if memory:
        cg_write("memory.max", memory)
        try:
            cg_write("memory.swap.max", 0)
        except OSError:
            pass  # no swap controller: there is no swap either
    if pids:
        cg_write("pids.max", pids)


def limit_hit():
    if cg_field("memory.events", "oom_kill") > 0:
        return "memory"
    if cg_field("pids.events", "max") > 0:
        return "pids"
    return ""


def usage():
    try:
        mem = int(cg_read("memory.current") or 0)
    except ValueError:
        mem = 0
    try:
        tasks = int(cg_read("pids.current") or 0)
    except ValueError:
        tasks = 0
    return {"op": "usage", "memory": mem, "cpu_usec": cg_field("cpu.stat", "usage_usec"),
            "tasks": tasks, "limit": limit_hit()}


def quiesce():
    """Before a snapshot: drop the page cache (the disks are read-only and
    the host caches them anyway), so that the snapshot and the VMs restored
    from it do not each carry a copy of it."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


MS_NOSUID, MS_NODEV, MS_SYNCHRONOUS, MS_BIND = 2, 4, 16, 4096
PERSIST = "/persist"


def _mount(source, target, fstype, flags, data=""):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                  data.encode() if data else None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "mount %s on %s: %s" % (source, target, os.strerror(e)))


def mount_persistent(targets, uid):
    """Mount the disk of a user's persistent folders (serial ra-persist) and
    bind each folder over the agent's. Writes are synchronous: the host may
    stop the VM at any moment after a call, and what the call wrote must
    be on the disk by then."""
    dev = None
    for b in os.listdir("/sys/block"):
        try:
            with open("/sys/block/%s/serial" % b) as f:
                if f.read().strip() == "ra-persist":
                    dev = "/dev/" + b
        except OSError:
            pass
    if dev is None:
        raise RuntimeError("no persistent folders' disk (serial ra-persist)")
    _mount(dev, PERSIST, "ext4", MS_NOSUID | MS_NODEV | MS_SYNCHRONOUS)
    owned = os.path.join(PERSIST, ".runagent-owned")
    if not os.path.exists(owned):
        # The host made the disk as root: the agent's user owns its content.
        for root, dirs, files in os.walk(PERSIST):
            for n in dirs + files:
                if root == PERSIST and n == "lost+found":
                    continue
                os.lchown(os.path.join(root, n), uid, uid)
        open(owned, "w").close()
    for t in targets:
        src = os.path.join(PERSIST, os.path.relpath(t, "/agent"))
        if not os.path.isdir(src):
            os.makedirs(src)
            os.chown(src, uid, uid)
        _mount(src, t, None, MS_BIND)


def start_runner(msg, ports):
    if msg.get("mounts"):
        mount_persistent([str(t) for t in msg["mounts"]], int(msg.get("uid", 1000)))
    make_cgroup(int(msg.get("memory") or 0), int(msg.get("pids") or 0), float(msg.get("cpus") or 0))
    uid = int(msg.get("uid", 1000))
    argv = [str(a) for a in msg["argv"]]
    env = [str(e) for e in msg.get("env") or []]
    envd = dict(e.split("=", 1) for e in env if "=" in e)
    cwd = msg.get("cwd") or "/"
    rd, wr = os.pipe()  # the child's exec closes wr: start failures come back on it
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rd)
            with open(os.path.join(CGROUP, "cgroup.procs"), "w") as f:
                f.write("0")
            os.setsid()
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(ports["ra.stdout"], 1)
            os.dup2(ports["ra.stderr"], 2)
            os.dup2(ports["ra.channel"], 3)
            os.closerange(4, wr)
            os.closerange(wr + 1, 1 << 16)
            os.set_inheritable(3, True)
            os.chdir(cwd)
            os.execve(argv[0], argv, envd)
        except BaseException as e:  # noqa: report any failure to the parent
            try:
                os.write(wr, ("%s: %s" % (type(e).__name__, e)).encode())
            finally:
                os._exit(127)
    os.close(wr)
    err = os.read(rd, 4096)
    os.close(rd)
    if err:
        raise RuntimeError("starting the runner %s: %s" % (argv[0], err.decode(errors="replace")))
    return pid


def resume(msg):
    seed = bytes.fromhex(msg.get("seed") or "")
    if seed:
        # struct rand_pool_info {int entropy_count; int buf_size; u32 buf[];}
        info = struct.pack("ii", len(seed) * 8, len(seed)) + seed
        fd = os.open("/dev/urandom", os.O_WRONLY)
        try:
            import fcntl
            fcntl.ioctl(fd, RNDADDENTROPY, info)
            fcntl.ioctl(fd, RNDRESEEDCRNG)
        finally:
            os.close(fd)
    t = msg.get("time_ns")
    if isinstance(t, int) and t > 0:
        time.clock_settime_ns(time.CLOCK_REALTIME, t)


def status_of(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "SIG%d" % sig
        return -1, name
    return os.WEXITSTATUS(status), ""


def kill_all():
    try:
        cg_write("cgroup.kill", 1)
    except OSError:
        pass


def power_off():
    try:
        os.sync()
    except OSError:
        pass
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(0x4321FEDC)  # LINUX_REBOOT_CMD_POWER_OFF
    while True:
        time.sleep(3600)


def main():
    # fds 0-2 must be taken before the ports are opened, or a port lands on
    # one of them and the dup2s below overwrite it.
    while True:
        fd = os.open("/dev/null", os.O_RDWR)
        if fd > 2:
            os.close(fd)
            break
    ports = {}
    for name in ("ra.control", "ra.channel", "ra.stdout", "ra.stderr"):
        ports[name] = os.open(find_port(name), os.O_RDWR | os.O_CLOEXEC)
    # Our own messages go where the runner's stderr goes.
    os.dup2(ports["ra.stderr"], 2)
    ctl = Control(ports["ra.control"])
    ctl.send(op="hello")
    child = None
    pidfd = None
    poller = select.poll()
    poller.register(ctl.fd, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == ctl.fd:
                lines = ctl.read_lines()
                if lines is None:
                    kill_all()
                    power_off()
                for msg in lines:
                    op = msg.get("op")
                    try:
                        if op == "start" and child is None:
                            child = start_runner(msg, ports)
                            pidfd = os.pidfd_open(child)
                            poller.register(pidfd, select.POLLIN)
                            ctl.send(op="started", pid=child)
                        elif op == "usage":
                            ctl.send(**usage())
                        elif op == "quiesce":
                            quiesce()
                            ctl.send(op="quiesced")
                        elif op == "resume":
                            resume(msg)
                            ctl.send(op="resumed")
                        else:
                            log("unexpected control message %r" % op)
                    except Exception as e:  # noqa: the host decides
                        ctl.send(op="error", message="%s: %s" % (type(e).__name__, e))
        # PID 1 reaps whatever is reparented to it; the runner's end ends
        # the instance.
        try:
            while True:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                if pid == child:
                    code, sig = status_of(status)
                    limit = limit_hit()
                    kill_all()
                    ctl.send(op="exit", code=code, signal=sig, limit=limit)
                    power_off()
        except ChildProcessError:
            pass

if __name__ == "__main__":
    try:
        main()
    except BaseException as e:  # noqa: PID 1 must not just die
        log("fatal: %s: %s" % (type(e).__name__, e))
        kill_all()
        power_off()
