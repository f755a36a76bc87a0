#!/usr/bin/env bash
# What `make test` needs on this machine (`make deps` runs this; `make test`
# depends on it). It installs what is missing: Debian packages with apt-get
# (as root), pytest with pip. When it cannot (not root, no apt-get), it names
# the packages and the command that installs them, and fails if the tests
# cannot pass without them; for a part the tests skip on their own it says
# what will be skipped. When everything is there it only looks (a few
# `command -v` and one Python start).
#
#   RUNAGENT_TEST_NO_MICROVM=1  no QEMU, debootstrap or microVM image: the
#                               microvm tests are skipped
#   RUNAGENT_TEST_NO_BWRAP=1    no bubblewrap: the namespace tests are skipped
#   RUNAGENT_TEST_NO_GVISOR=1   no runsc: the gvisor tests are skipped
#   RUNAGENT_TEST_POSTGRES=URL  a PostgreSQL server for the store's tests
#                               (default: a private one from the postgresql package)
#   PYTHON                      the interpreter of the Python tests (python3)
set -euo pipefail

PYTHON=${PYTHON:-python3}
microvm=1
[ "${RUNAGENT_TEST_NO_MICROVM:-}" = 1 ] && microvm=0

microvm_note="or RUNAGENT_TEST_NO_MICROVM=1 to skip the microVM image and the microvm tests"

say() { echo "deps: $*"; }

required=() # Debian packages the tests fail without
optional=() # Debian packages whose tests are skipped without them
all=()      # both, in the order found
why=()      # "package: what needs it", for the message
skipped=()  # what will not run, when an optional package stays missing
errors=()   # what this script does not install (toolchains)
need() { # need required|optional PACKAGE WHAT [SKIPPED]
	local kind=$1 pkg=$2 what=$3
	case " ${all[*]-} " in *" $pkg "*) return ;; esac
	if [ "$kind" = required ]; then required+=("$pkg"); else optional+=("$pkg"); skipped+=("${4:-}"); fi
	all+=("$pkg")
	why+=("$pkg: $what")
}
have() { command -v "$1" >/dev/null 2>&1; }

# --- toolchains: named, not installed ---------------------------------------
have go || errors+=("go: Go 1.26+ (https://go.dev/dl/)")
have node && have npm || errors+=("node, npm: Node 18+ for the TypeScript SDK (apt-get install nodejs npm, or https://nodejs.org)")
if have node; then
	v=$(node --version 2>/dev/null || true)
	v=${v#v}
	[ "${v%%.*}" -ge 18 ] 2>/dev/null || errors+=("node: Node 18+ for the TypeScript SDK, this is ${v:-unknown}")
fi
have cargo || errors+=("cargo: Rust for the Rust SDK (https://rustup.rs)")

# --- Python: the runner's tests (pytest) and the SDK's virtualenv (venv) ----
py=""
if have "$PYTHON"; then
	py=$("$PYTHON" -c '
import os, sys, sysconfig
from importlib.util import find_spec as f
b = lambda x: "1" if x else "0"
print("%d.%d" % sys.version_info[:2], b(sys.version_info >= (3, 9)), b(f("pytest")), b(f("pip")),
      b(f("ensurepip") and f("venv")), b(os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))),
      b(sys.prefix == "/usr"))' 2>/dev/null || true)
fi
pip_pytest=0
if [ -z "$py" ]; then
	errors+=("$PYTHON: Python 3.9+ (apt-get install python3, or set PYTHON=)")
else
	read -r pyver py_ok has_pytest has_pip has_venv managed system <<<"$py"
	[ "$py_ok" = 1 ] || errors+=("$PYTHON: Python 3.9+ is needed, this is $pyver")
	if [ "$has_venv" = 0 ]; then
		if [ "$system" = 1 ]; then
			need required "python$pyver-venv" "$PYTHON -m venv (the Python SDK's tests and the agents' virtualenvs)"
		else
			errors+=("$PYTHON: its venv module (ensurepip) is missing: the Python SDK's tests and the agents' virtualenvs need it")
		fi
	fi
	if [ "$has_pytest" = 0 ]; then
		# Debian's own Python refuses pip (PEP 668): its pytest is a package.
		if [ "$system" = 1 ] && { [ "$managed" = 1 ] || [ "$has_pip" = 0 ]; }; then
			need required python3-pytest "pytest for $PYTHON (the Python runner's tests)"
		elif [ "$has_pip" = 1 ]; then
			pip_pytest=1
		else
			errors+=("$PYTHON: pytest is missing and so is pip: install pytest for it")
		fi
	fi
fi
if have cargo && ! have cc; then
	need required gcc "cc, the linker cargo links the Rust SDK's tests with"
fi

# --- Debian packages the tests drive for real -------------------------------
if [ "${RUNAGENT_TEST_NO_BWRAP:-}" != 1 ]; then
	have bwrap || need required bubblewrap "bwrap, the namespace sandbox driver (or RUNAGENT_TEST_NO_BWRAP=1 to skip its tests)"
fi
if [ "${RUNAGENT_TEST_NO_GVISOR:-}" != 1 ]; then
	have runsc || need required runsc "runsc, the gvisor sandbox driver (or RUNAGENT_TEST_NO_GVISOR=1 to skip its tests)"
fi
# The PostgreSQL store's tests start a private server from these binaries
# (or use the one RUNAGENT_TEST_POSTGRES names).
have ip || need required iproute2 "ip, the network namespace of the cluster resilience test"
if [ -z "${RUNAGENT_TEST_POSTGRES:-}" ] && ! have initdb && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
	need required postgresql "initdb and postgres, the PostgreSQL store's tests (or RUNAGENT_TEST_POSTGRES=postgres://... to use a running server)"
fi
# The browser test skips itself without Chromium, except in CI (CI=...).
if ! have chromium && [ ! -x /usr/bin/chromium-browser ] && [ -z "${CHROMIUM:-}" ]; then
	if [ -n "${CI:-}" ]; then
		need required chromium "headless Chromium, the TypeScript SDK's browser test (CI=$CI makes it required)"
	else
		need optional chromium "headless Chromium, the TypeScript SDK's browser test" "the TypeScript SDK's browser test"
	fi
fi
# The microVM initramfs writer's test unpacks its archive with both.
have busybox || need optional busybox-static "busybox cpio, the microVM initramfs test" "the initramfs test's unpacking with busybox"
have cpio || need optional cpio "cpio, the microVM initramfs test" "the initramfs test's unpacking with cpio"
lists=1
if [ "$microvm" = 1 ]; then
	# `runagent microvm image build` (make microvm-image, TestBuildImage):
	# debootstrap, e2fsprogs and dpkg, and apt-get download of Debian's
	# kernel and busybox, which needs the package lists; QEMU boots it.
	have qemu-system-x86_64 || need required qemu-system-x86 "qemu-system-x86_64, the microvm sandbox driver"
	have debootstrap || need required debootstrap "debootstrap, the microVM guest image build"
	have mkfs.ext4 && have debugfs || need required e2fsprogs "mkfs.ext4 and debugfs, the microVM guest image build"
	have dpkg-deb || need required dpkg "dpkg-deb, the microVM guest image build"
	have xz || need required xz-utils "xz, the microVM guest image build (compressed kernel modules)"
	have apt-get && have apt-cache || errors+=("apt-get, apt-cache: the microVM image build downloads Debian's kernel and busybox with them (a Debian host; $microvm_note)")
	compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || lists=0
fi

if [ ${#errors[@]} -gt 0 ]; then
	say "make test needs these, which this script does not install:"
	printf '  %s\n' "${errors[@]}"
	exit 1
fi

# --- install ----------------------------------------------------------------
if [ "$(id -u)" = 0 ] && have apt-get; then
	if [ ${#all[@]} -gt 0 ] || [ "$lists" = 0 ]; then
		if [ "$lists" = 0 ]; then
			say "apt-get update (the microVM image build downloads Debian's kernel and busybox with apt-get)"
		else
			say "apt-get update"
		fi
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq
	fi
	if [ ${#all[@]} -gt 0 ]; then
		say "installing ${all[*]}:"
		printf '  %s\n' "${why[@]}"
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${all[@]}" >/dev/null
	fi
else
	if [ "$(id -u)" != 0 ]; then how="sudo " reason="not root"; else how="" reason="no apt-get"; fi
	fail=0
	if [ ${#all[@]} -gt 0 ]; then
		say "missing Debian packages ($reason, so not installed):"
		printf '  %s\n' "${why[@]}"
		say "install them with:"
		echo "  ${how}apt-get update && ${how}env DEBIAN_FRONTEND=noninteractive apt-get install -y ${all[*]}"
		if [ "$reason" = "not root" ]; then say "(or run this script as root: sudo make deps)"; fi
	fi
	if [ ${#required[@]} -gt 0 ]; then
		say "the tests fail without ${required[*]}"
		fail=1
	fi
	if [ ${#optional[@]} -gt 0 ]; then
		say "without ${optional[*]}, these are skipped:"
		printf '  %s\n' "${skipped[@]}"
	fi
	if [ "$lists" = 0 ]; then
		say "the apt package lists are missing and the microVM image build needs them: ${how}apt-get update ($microvm_note)"
		fail=1
	fi
	if [ "$microvm" = 1 ] && [ "$(id -u)" != 0 ]; then
		say "building the microVM guest image (make microvm-image) needs root: run make test as root ($microvm_note)"
		fail=1
	fi
	[ "$fail" = 0 ] || exit 1
fi

if [ "$pip_pytest" = 1 ]; then
	say "installing pytest for $PYTHON with pip"
	"$PYTHON" -m pip install --quiet --disable-pip-version-check pytest
fi
say "everything make test needs is installed"
