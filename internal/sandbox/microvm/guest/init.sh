#!/bin/busybox sh
# runagent microVM initramfs /init: load the virtio drivers (modules in
# Debian's cloud kernel), mount the read-only root disk and the agent's disk,
# give the guest its scratch space and (only if the agent may) its network,
# then hand PID 1 to the guest supervisor (/opt/runagent/guest.py).
#
# Kernel command line: ra.work=<MiB> (size of /tmp and of /work), ra.net=1.
B=/bin/busybox

fail() {
	echo "runagent init: $*"
	$B poweroff -f
}

$B mount -t devtmpfs -o nosuid,noexec dev /dev
$B mount -t proc -o nosuid,nodev,noexec proc /proc
$B mount -t sysfs -o nosuid,nodev,noexec sys /sys
for m in virtio_ring virtio virtio_mmio virtio_blk virtio_console failover net_failover virtio_net; do
	if [ -f /lib/modules/$m.ko ]; then
		$B insmod /lib/modules/$m.ko || fail "insmod $m"
	fi
done
# PID 1 starts with no stdin, stdout or stderr (the console driver was a
# module): give it some, or the supervisor's first ports land on fds 0-2.
# hvc0 appears once QEMU has announced the console port.
exec </dev/null >/dev/null 2>&1
for i in 1 2 3 4 5 6 7 8 9 10; do
	[ -c /dev/hvc0 ] && break
	$B usleep 20000
done
[ -c /dev/hvc0 ] && exec >/dev/hvc0 2>&1

work=16
net=0
for a in $($B cat /proc/cmdline); do
	case "$a" in
	ra.work=*) work=${a#ra.work=} ;;
	ra.net=*) net=${a#ra.net=} ;;
	esac
done

root=
agent=
for b in /sys/block/vd*; do
	case "$($B cat "$b/serial" 2>/dev/null)" in
	ra-root) root=/dev/${b##*/} ;;
	ra-agent) agent=/dev/${b##*/} ;;
	esac
done
[ -n "$root" ] || fail "no root disk (serial ra-root)"

$B mount -t ext4 -o ro,noload "$root" /newroot || fail "mount the root disk $root"
if [ -n "$agent" ]; then
	$B mount -t ext4 -o ro,noload,nodev,nosuid "$agent" /newroot/mnt || fail "mount the agent disk $agent"
	[ -d /newroot/mnt/agent ] && $B mount --bind /newroot/mnt/agent /newroot/agent
	[ -d /newroot/mnt/venv ] && $B mount --bind /newroot/mnt/venv /newroot/venv
fi
$B mount -t tmpfs -o nosuid,nodev,size=${work}m,mode=1777 tmp /newroot/tmp || fail "mount /tmp"
$B mount -t tmpfs -o nosuid,nodev,size=${work}m,mode=0755,uid=1000,gid=1000 work /newroot/work || fail "mount /work"

$B ip link set lo up
if [ "$net" = 1 ]; then
	# QEMU's user-mode network: a fixed address, its gateway and DNS.
	$B ip link set eth0 up &&
		$B ip addr add 10.0.2.15/24 dev eth0 &&
		$B ip route add default via 10.0.2.2 &&
		# QEMU forwards connections to 10.0.2.2 to the host's own loopback:
		# the agent gets the network, not the host's local services. (The
		# gateway still routes: a next hop is not looked up as a route.)
		$B ip route add blackhole 10.0.2.2/32 || fail "network"
fi

$B mount --move /dev /newroot/dev
$B mount --move /proc /newroot/proc
$B mount --move /sys /newroot/sys
$B mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /newroot/sys/fs/cgroup || fail "mount cgroup2"
# POSIX shared memory (multiprocessing's locks and queues) and ptys, as a
# Linux machine has them.
$B mkdir -p /newroot/dev/shm /newroot/dev/pts
$B mount -t tmpfs -o nosuid,nodev,noexec,size=${work}m,mode=1777 shm /newroot/dev/shm || fail "mount /dev/shm"
$B mount -t devpts -o nosuid,noexec,newinstance,ptmxmode=0666,mode=0620 devpts /newroot/dev/pts || fail "mount /dev/pts"
exec $B switch_root /newroot /usr/bin/python3 -I -S -B /opt/runagent/guest.py
