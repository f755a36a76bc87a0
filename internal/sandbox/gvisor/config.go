package gvisor

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/runagent-go/runagent/internal/sandbox"
)

// The parts of the OCI runtime spec (config.json) the driver writes.
type config struct {
	OCIVersion string  `json:"ociVersion"`
	Hostname   string  `json:"hostname"`
	Root       root    `json:"root"`
	Process    process `json:"process"`
	Mounts     []mount `json:"mounts"`
	Linux      linux   `json:"linux"`
}

type root struct {
	Path     string `json:"path"`
	Readonly bool   `json:"readonly"`
}

type process struct {
	Terminal        bool         `json:"terminal"`
	User            user         `json:"user"`
	Args            []string     `json:"args"`
	Env             []string     `json:"env"`
	Cwd             string       `json:"cwd"`
	Capabilities    capabilities `json:"capabilities"`
	Rlimits         []rlimit     `json:"rlimits"`
	NoNewPrivileges bool         `json:"noNewPrivileges"`
}

type user struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
}

type capabilities struct {
	Bounding    []string `json:"bounding"`
	Effective   []string `json:"effective"`
	Inheritable []string `json:"inheritable"`
	Permitted   []string `json:"permitted"`
	Ambient     []string `json:"ambient"`
}

type rlimit struct {
	Type string `json:"type"`
	Hard uint64 `json:"hard"`
	Soft uint64 `json:"soft"`
}

type mount struct {
	Destination string   `json:"destination"`
	Type        string   `json:"type"`
	Source      string   `json:"source"`
	Options     []string `json:"options,omitempty"`
}

type linux struct {
	Namespaces  []namespace `json:"namespaces"`
	Resources   *resources  `json:"resources,omitempty"`
	CgroupsPath string      `json:"cgroupsPath"`
}

type namespace struct {
	Type string `json:"type"`
}

type resources struct {
	Memory *memory `json:"memory,omitempty"`
	Pids   *pids   `json:"pids,omitempty"`
}

type memory struct {
	Limit int64 `json:"limit"`
	Swap  int64 `json:"swap"`
}

type pids struct {
	Limit int64 `json:"limit"`
}

// systemDirs are the top-level directories of system binaries and
// libraries: on a merged-/usr system they are symlinks into /usr, which the
// root gets as symlinks too; otherwise they are bound read-only.
var systemDirs = []string{"/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"}

// bundleConfig is the OCI config of instance s whose interpreter is
// installed under pyPrefix (root.path is set when the bundle is written).
func bundleConfig(s sandbox.Spec, pyPrefix string) *config {
	c := &config{
		OCIVersion: "1.0.2",
		Hostname:   "runagent",
		Root:       root{Readonly: true},
		Process: process{
			User: user{UID: 0, GID: 0},
			Args: append(append([]string{s.Python}, s.Args...), "--fd", "0"),
			Env:  environ(s.Env),
			Cwd:  s.AgentDir,
			Capabilities: capabilities{
				Bounding: []string{}, Effective: []string{}, Inheritable: []string{}, Permitted: []string{}, Ambient: []string{},
			},
			Rlimits:         []rlimit{{Type: "RLIMIT_CORE"}},
			NoNewPrivileges: true,
		},
		Mounts: mounts(s, pyPrefix),
		Linux: linux{
			CgroupsPath: "/runagent/" + s.ID,
		},
	}
	if n := s.Limits.OpenFiles; n > 0 {
		c.Process.Rlimits = append(c.Process.Rlimits, rlimit{Type: "RLIMIT_NOFILE", Hard: uint64(n), Soft: uint64(n)})
	}
	// The agent's processes and threads are the Sentry's tasks, not the
	// host's: the Sentry enforces RLIMIT_NPROC on them (all of them run as
	// uid 0 without CAP_SYS_RESOURCE), a fork or thread past it failing
	// with EAGAIN as under a pids cgroup. The host cgroup only bounds what
	// the sandbox as a whole may cost (see hostPids).
	if n := s.Limits.Pids; n > 0 {
		c.Process.Rlimits = append(c.Process.Rlimits, rlimit{Type: "RLIMIT_NPROC", Hard: uint64(n), Soft: uint64(n)})
	}
	// Without the network, the sandbox's host processes get an empty
	// network namespace of their own (and the Sentry's netstack has only
	// loopback). With it (--network=host), the Sentry makes its sockets in
	// the host's network namespace, where it must stay.
	nss := []string{"pid", "ipc", "uts", "mount"}
	if !s.Network {
		nss = append(nss, "network")
	}
	for _, ns := range nss {
		c.Linux.Namespaces = append(c.Linux.Namespaces, namespace{Type: ns})
	}
	// runsc runs with --ignore-cgroups (the driver's own cgroup and
	// RLIMIT_NPROC enforce these); they are here to describe the container.
	if s.Limits.MemoryBytes > 0 || s.Limits.Pids > 0 {
		r := &resources{}
		if m := s.Limits.MemoryBytes; m > 0 {
			r.Memory = &memory{Limit: m, Swap: m}
		}
		if p := s.Limits.Pids; p > 0 {
			r.Pids = &pids{Limit: int64(p)}
		}
		c.Linux.Resources = r
	}
	return c
}

// environ is the runner's environment: env with HOME=/work and TMPDIR=/tmp,
// a PATH if it has none, one entry per name (the last one wins, as with
// os/exec).
func environ(env []string) []string {
	env = append(slices.Clone(env), "HOME=/work", "TMPDIR=/tmp")
	var out []string
	seen := map[string]int{}
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if i, ok := seen[name]; ok {
			out[i] = kv
			continue
		}
		seen[name] = len(out)
		out = append(out, kv)
	}
	if _, ok := seen["PATH"]; !ok {
		out = append(out, "PATH=/usr/local/bin:/usr/bin:/bin")
	}
	return out
}

// mounts are the container's mounts: nothing of the host's file system but
// what the runner needs, read-only, at the same paths as outside.
func mounts(s sandbox.Spec, pyPrefix string) []mount {
	tmpfs := func(dir, mode string) mount {
		opts := []string{"nosuid", "nodev", "mode=" + mode}
		if n := s.Limits.WorkDirBytes; n > 0 {
			opts = append(opts, "size="+strconv.FormatInt(n, 10))
		}
		return mount{Destination: dir, Type: "tmpfs", Source: "tmpfs", Options: opts}
	}
	ro := func(p string) mount {
		return mount{Destination: p, Type: "bind", Source: p, Options: []string{"rbind", "ro"}}
	}
	m := []mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		// gVisor's own /dev (null, zero, urandom, pts...), none of the host's.
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755"}},
		tmpfs("/tmp", "1777"),
		tmpfs("/work", "755"),
		ro("/usr"),
	}
	for _, dir := range systemDirs {
		if _, err := os.Readlink(dir); err == nil {
			continue // a symlink in the root (writeBundle)
		}
		if st, err := os.Stat(dir); err == nil && st.IsDir() {
			m = append(m, ro(dir))
		}
	}
	etc := []string{"/etc/ld.so.cache", "/etc/localtime"}
	if s.Network {
		// /etc/ssl but for its private keys.
		etc = append(etc, "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf",
			"/etc/ssl/certs", "/etc/ssl/openssl.cnf", "/etc/ca-certificates")
	}
	for _, f := range etc {
		if _, err := os.Stat(f); err == nil {
			m = append(m, ro(f))
		}
	}
	// The interpreter, virtualenv, runner and agent, shallowest first and
	// after the tmpfs mounts, so that a folder under /tmp (a test's agent)
	// is bound on top of the private /tmp.
	var dirs []string
	for _, p := range []string{pyPrefix, s.Venv, filepath.Dir(s.Script), s.AgentDir} {
		if p == "" || s.Script == "" && p == "." {
			continue
		}
		p = filepath.Clean(p)
		if p != "/" && !strings.HasPrefix(p+"/", "/usr/") && !slices.Contains(dirs, p) {
			dirs = append(dirs, p)
		}
	}
	slices.SortStableFunc(dirs, func(x, y string) int { return strings.Count(x, "/") - strings.Count(y, "/") })
	for _, p := range dirs {
		m = append(m, ro(p))
	}
	// A user's persistent folders, writable, on top of the agent folder.
	for _, pm := range s.Mounts {
		m = append(m, mount{Destination: filepath.Join(s.AgentDir, filepath.FromSlash(pm.Target)), Type: "bind",
			Source: pm.Source, Options: []string{"rbind", "rw"}})
	}
	return m
}
