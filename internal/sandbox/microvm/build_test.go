package microvm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/pyrunner"
)

func TestCheckOut(t *testing.T) {
	dir := t.TempDir()
	for name, files := range map[string][]string{"empty": nil, "image": {ManifestFile, RootFile}, "other": {"notes.txt"}} {
		os.MkdirAll(filepath.Join(dir, name), 0o755)
		for _, f := range files {
			os.WriteFile(filepath.Join(dir, name, f), nil, 0o644)
		}
	}
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o644)
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"missing", true},
		{"empty", true},
		{"image", true},
		{"other", false},
		{"file", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := checkOut(filepath.Join(dir, tc.name)); (err == nil) != tc.ok {
				t.Errorf("checkOut: %v, want ok %v", err, tc.ok)
			}
		})
	}
}

func TestParsePackages(t *testing.T) {
	for _, tc := range []struct {
		name string
		out  string
		want map[string]string
	}{
		{"installed", "ii  python3 3.11.2-1+b1\nii  bsdutils 1:2.38.1-5+deb12u3\n", map[string]string{"python3": "3.11.2-1+b1", "bsdutils": "1:2.38.1-5+deb12u3"}},
		{"not installed", "un  foo 1.0\nrc  bar 2.0\nii  baz 3.0\n", map[string]string{"baz": "3.0"}},
		{"blank and short lines", "\nii  x\n\n", map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parsePackages([]byte(tc.out)); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestParseKernelDepends(t *testing.T) {
	for _, tc := range []struct {
		name, out, want string
	}{
		{"bookworm", "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n", "linux-image-6.1.0-56-cloud-amd64"},
		{"alternatives", "linux-image-cloud-amd64\n |Depends: linux-image-6.12.1-cloud-amd64\n  Depends: linux-image-6.12.0-cloud-amd64\n", "linux-image-6.12.1-cloud-amd64"},
		{"other depends first", "x\n  Depends: initramfs-tools\n  Depends: linux-image-6.1.0-1-cloud-amd64\n", "linux-image-6.1.0-1-cloud-amd64"},
		{"none", "linux-image-cloud-amd64\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseKernelDepends([]byte(tc.out)); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParsePrintURIs(t *testing.T) {
	out := `'http://deb.debian.org/debian/pool/main/b/busybox/busybox-static_1.35.0-4%2bdeb12u1%2bb1_amd64.deb' busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb 928188 SHA256:3d3fdbe9
'http://deb.debian.org/debian-security/pool/updates/main/l/linux-signed-amd64/linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb' linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb 26713492 SHA256:e7d02b94
W: some warning
`
	got, err := parsePrintURIs([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]debPkg{
		"busybox-static": {Name: "busybox-static", Version: "1:1.35.0-4+deb12u1+b1", File: "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb", Hash: "SHA256:3d3fdbe9"},
		"linux-image-6.1.0-56-cloud-amd64": {Name: "linux-image-6.1.0-56-cloud-amd64", Version: "6.1.192-2",
			File: "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb", Hash: "SHA256:e7d02b94"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	if _, err := parsePrintURIs([]byte("'http://x/y.deb' weird.deb 1 SHA256:00\n")); err == nil {
		t.Error("a file name that is not name_version_arch.deb is not an error")
	}
}

func TestAptHint(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		hint bool
	}{
		{"E: Unable to locate package busybox-static", true},
		{"E: No packages found", true},
		{"E: Package 'x' has no installation candidate", true},
		{"E: Failed to fetch http://deb.debian.org/x.deb  404  Not Found [IP: 1.2.3.4 80]", true},
		{"E: Could not resolve 'deb.debian.org'", false},
	} {
		t.Run(tc.msg, func(t *testing.T) {
			got := strings.Contains(aptHint(errors.New(tc.msg)).Error(), "apt-get update")
			if got != tc.hint {
				t.Errorf("hint %v, want %v", got, tc.hint)
			}
		})
	}
}

func TestDebootstrapLog(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lines []string
		want  []string
	}{
		{
			"runs are counted",
			[]string{"I: Retrieving InRelease", "I: Checking Release signature", "I: Retrieving Packages", "I: Validating Packages",
				"I: Resolving dependencies of required packages...", "I: Retrieving adduser 3.134", "I: Validating adduser 3.134", "I: Retrieving apt 2.6.1", "I: Validating apt 2.6.1",
				"I: Extracting adduser...", "I: Extracting apt...", "I: Unpacking required packages...", "I: Unpacking adduser...",
				"I: Base system installed successfully."},
			[]string{"> I: Retrieving InRelease", "> I: Checking Release signature", "> I: Retrieving Packages",
				"> I: Resolving dependencies of required packages...", "> I: Retrieving 2 packages", "> I: Extracting 2 packages", "> I: Unpacking required packages...",
				"> I: Unpacking adduser...", "> I: Base system installed successfully."},
		},
		{
			"other output is kept",
			[]string{"W: Failure trying to run: chroot x", "", "E: boom"},
			[]string{"> W: Failure trying to run: chroot x", "> E: boom"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			d := &debootstrapLog{out: &buf, prefix: "> "}
			for _, l := range tc.lines {
				d.line(l)
			}
			d.flush()
			// Drop the run's duration: it is the only thing that varies.
			got := strings.Split(strings.TrimSpace(regexp.MustCompile(` \(\S+\)`).ReplaceAllString(buf.String(), "")), "\n")
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// buildFakeRoot is the part of a debootstrap tree customizeRoot edits.
func buildFakeRoot(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"etc/passwd":   "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
		"etc/group":    "root:x:0:\nshadow:x:42:\nnogroup:x:65534:", // no final newline
		"etc/shadow":   "root:*:19000:0:99999:7:::\n",
		"etc/gshadow":  "root:*::\n",
		"etc/hostname": "buildhost\n",
	}
	for name, body := range files {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"usr/bin", "mnt", "tmp"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	// resolv.conf as a symlink out of the tree, as with systemd-resolved.
	os.Symlink("/run/systemd/resolve/stub-resolv.conf", filepath.Join(dir, "etc/resolv.conf"))
	os.Symlink("python3.11", filepath.Join(dir, "usr/bin/python3"))
	return dir
}

func TestCustomizeRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("customizeRoot gives /etc/shadow to root:shadow: run as root")
	}
	dir := buildFakeRoot(t)
	touched, err := customizeRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	// A second run (a base already customised) changes nothing more.
	if _, err := customizeRoot(dir); err != nil {
		t.Fatal(err)
	}
	type file struct {
		path string
		mode fs.FileMode
		body string // "" for a folder
	}
	var runner []file
	for name, b := range pyrunner.Files() {
		runner = append(runner, file{path.Join(GuestRunnerPath, name), 0o644, string(b)})
	}
	for _, tc := range append([]file{
		{GuestScriptPath, 0o644, string(GuestFiles()[GuestScriptPath])},
		{GuestRunnerPath, fs.ModeDir | 0o755, ""},
		{GuestRunnerPath + "/_runagent_runner", fs.ModeDir | 0o755, ""},
		{"/opt/runagent", fs.ModeDir | 0o755, ""},
		{GuestAgentDir, fs.ModeDir | 0o755, ""},
		{GuestVenv, fs.ModeDir | 0o755, ""},
		{"/work", fs.ModeDir | 0o755, ""},
		{"/mnt", fs.ModeDir | 0o755, ""},
		{"/etc/resolv.conf", 0o644, "nameserver 10.0.2.3\n"},
		{"/etc/hostname", 0o644, "runagent\n"},
		{"/etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nagent:x:1000:1000:runagent agent:/work:/usr/sbin/nologin\n"},
		{"/etc/group", 0o644, "root:x:0:\nshadow:x:42:\nnogroup:x:65534:\nagent:x:1000:\n"},
		{"/etc/shadow", 0o640, "root:*:19000:0:99999:7:::\n"},
		{"/etc/gshadow", 0o640, "root:*::\n"},
	}, runner...) {
		t.Run(tc.path, func(t *testing.T) {
			p := filepath.Join(dir, tc.path)
			fi, err := os.Lstat(p)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != tc.mode {
				t.Errorf("mode %v, want %v", fi.Mode(), tc.mode)
			}
			if tc.body != "" {
				if b, _ := os.ReadFile(p); string(b) != tc.body {
					t.Errorf("holds %q, want %q", b, tc.body)
				}
			}
		})
	}
	if st := buildTestStat(t, filepath.Join(dir, "etc/shadow")); st.Uid != 0 || st.Gid != 42 {
		t.Errorf("/etc/shadow is %d:%d, want 0:42 (root:shadow)", st.Uid, st.Gid)
	}
	hosts, _ := os.ReadFile(filepath.Join(dir, "etc/hosts"))
	if !regexp.MustCompile(`(?m)^127\.0\.0\.1\s+localhost runagent$`).Match(hosts) {
		t.Errorf("/etc/hosts is %q", hosts)
	}
	for _, want := range []string{"opt", "opt/runagent", "opt/runagent/guest.py", "agent", "work", "etc", "etc/passwd", "etc/resolv.conf"} {
		if !slices.Contains(touched, want) {
			t.Errorf("touched %v lacks %s", touched, want)
		}
	}
	for _, not := range []string{"mnt", "tmp", "usr/bin/python3", "etc/shadow"} {
		if slices.Contains(touched, not) {
			t.Errorf("touched lists %s, which the build does not write", not)
		}
	}
}

func buildTestStat(t *testing.T, path string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t)
}

func TestCustomizeRootUIDTaken(t *testing.T) {
	dir := buildFakeRoot(t)
	passwd := filepath.Join(dir, "etc/passwd")
	os.WriteFile(passwd, []byte("root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"), 0o644)
	if _, err := customizeRoot(dir); err == nil || !strings.Contains(err.Error(), "alice") {
		t.Errorf("error %v, want one naming alice, who has uid 1000", err)
	}
}

func TestPythonVersion(t *testing.T) {
	for _, tc := range []struct {
		target, want string
		ok           bool
	}{
		{"python3.11", "3.11", true},
		{"/usr/bin/python3.13", "3.13", true},
		{"python3", "", false},
		{"pypy3", "", false},
	} {
		t.Run(tc.target, func(t *testing.T) {
			dir := t.TempDir()
			os.MkdirAll(filepath.Join(dir, "usr/bin"), 0o755)
			os.Symlink(tc.target, filepath.Join(dir, "usr/bin/python3"))
			got, err := pythonVersion(dir)
			if (err == nil) != tc.ok || got != tc.want {
				t.Errorf("got %q, %v; want %q (ok %v)", got, err, tc.want, tc.ok)
			}
		})
	}
}

func TestExt4Size(t *testing.T) {
	for _, tc := range []struct {
		usage int64
		want  int64
	}{
		{0, 32},
		{1, 33},              // rounded up to a whole MiB
		{100 << 20, 152},     // 120 + 32
		{125_000_000, 176},   // 150 MB + 32 MiB, rounded up
		{5 << 30, 6144 + 32}, // 6 GiB + 32 MiB
	} {
		if got := ext4SizeMiB(tc.usage); got != tc.want {
			t.Errorf("ext4SizeMiB(%d) = %d, want %d", tc.usage, got, tc.want)
		}
	}
	if got := ext4Inodes(5000); got < 5000 {
		t.Errorf("ext4Inodes(5000) = %d, fewer than the files", got)
	}
}

func TestDerivedUUID(t *testing.T) {
	a, b := derivedUUID("uuid", "k"), derivedUUID("hash_seed", "k")
	for _, u := range []string{a, b} {
		if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(u) {
			t.Errorf("%q is not a well-formed UUID", u)
		}
	}
	if a == b {
		t.Error("different labels give the same UUID")
	}
	if derivedUUID("uuid", "k") != a {
		t.Error("the same inputs give another UUID")
	}
}

func TestUsedInodes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		stats string
		want  int
		ok    bool
	}{
		{"stats", "Filesystem volume name:   ra-root\nInode count:              6336\nBlock count:              46336\nFree inodes:              800\nFirst inode:              11\n", 5536, true},
		{"missing", "Inode count: 10\n", 0, false},
		{"garbage", "Inode count: many\nFree inodes: 1\n", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := usedInodes([]byte(tc.stats))
			if (err == nil) != tc.ok || got != tc.want {
				t.Errorf("got %d, %v; want %d (ok %v)", got, err, tc.want, tc.ok)
			}
		})
	}
}

func TestStripBase(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"usr/share/doc/bash/copyright", "usr/share/man/man1/ls.1.gz", "usr/share/locale/de/x.mo",
		"var/cache/apt/pkgcache.bin", "var/lib/apt/lists/lock", "var/log/dpkg.log", "var/log/apt/history.log",
		"usr/share/zoneinfo/UTC", "usr/lib/python3.11/os.py"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(dir, p), []byte("x"), 0o644)
	}
	if err := stripBase(dir); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path   string
		exists bool
	}{
		{"usr/share/doc", false},
		{"usr/share/man", false},
		{"usr/share/locale", false},
		{"var/cache/apt", true},
		{"var/cache/apt/pkgcache.bin", false},
		{"var/lib/apt/lists", true},
		{"var/lib/apt/lists/lock", false},
		{"var/log", true},
		{"var/log/apt", false},
		{"usr/share/zoneinfo/UTC", true},
		{"usr/lib/python3.11/os.py", true},
	} {
		if _, err := os.Lstat(filepath.Join(dir, tc.path)); (err == nil) != tc.exists {
			t.Errorf("%s: exists %v, want %v", tc.path, err == nil, tc.exists)
		}
	}
}

func TestReadModules(t *testing.T) {
	dir := t.TempDir()
	builtin := ""
	for i, m := range guestModules {
		switch i {
		case 0: // built into the kernel: no file needed
			builtin += m + ".ko\n"
			continue
		}
		os.MkdirAll(filepath.Join(dir, filepath.Dir(m)), 0o755)
		os.WriteFile(filepath.Join(dir, m+".ko"), []byte(filepath.Base(m)), 0o644)
	}
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(builtin), 0o644)
	mods, err := readModules(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(mods) != len(guestModules)-1 || string(mods["virtio_blk.ko"]) != "virtio_blk" {
		t.Errorf("modules %v", mods)
	}
	if _, ok := mods[filepath.Base(guestModules[0])+".ko"]; ok {
		t.Error("a built-in driver got a module")
	}
	os.Remove(filepath.Join(dir, guestModules[3]+".ko"))
	if _, err := readModules(context.Background(), dir); err == nil || !strings.Contains(err.Error(), "virtio_blk") {
		t.Errorf("a missing module: error %v", err)
	}
}

func TestInitrdEntries(t *testing.T) {
	entries := initrdEntries([]byte("busybox"), map[string][]byte{"virtio.ko": []byte("m")})
	byName := map[string]cpioEntry{}
	for _, e := range entries {
		byName[e.Name] = e
	}
	for _, tc := range []struct {
		name string
		mode fs.FileMode
		data string
	}{
		{"/init", 0o755, string(GuestFiles()["/init"])},
		{"/bin/busybox", 0o755, "busybox"},
		{"/lib/modules/virtio.ko", 0o644, "m"},
		{"/dev/console", fs.ModeDevice | fs.ModeCharDevice | 0o600, ""},
		{"/newroot", fs.ModeDir | 0o755, ""},
		{"/proc", fs.ModeDir | 0o755, ""},
		{"/sys", fs.ModeDir | 0o755, ""},
	} {
		e, ok := byName[tc.name]
		if !ok {
			t.Errorf("no %s", tc.name)
			continue
		}
		if e.Mode != tc.mode || string(e.Data) != tc.data {
			t.Errorf("%s: mode %v, %d bytes; want %v, %d bytes", tc.name, e.Mode, len(e.Data), tc.mode, len(tc.data))
		}
	}
	if c := byName["/dev/console"]; c.Major != 5 || c.Minor != 1 {
		t.Errorf("/dev/console is %d:%d, want 5:1", c.Major, c.Minor)
	}
	if err := writeCPIO(&bytes.Buffer{}, entries); err != nil {
		t.Error(err)
	}
}

func TestCheckHash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.deb")
	os.WriteFile(path, []byte("deb"), 0o644)
	sum := sha256.Sum256([]byte("deb"))
	for _, tc := range []struct {
		want string
		ok   bool
	}{
		{"SHA256:" + hex.EncodeToString(sum[:]), true},
		{"SHA256:" + strings.ToUpper(hex.EncodeToString(sum[:])), true},
		{"SHA256:00", false},
		{"MD5Sum:whatever", true}, // left to apt
	} {
		if err := checkHash(path, tc.want); (err == nil) != tc.ok {
			t.Errorf("checkHash(%q): %v, want ok %v", tc.want, err, tc.ok)
		}
	}
	if err := checkHash(path+".missing", "SHA256:00"); err == nil {
		t.Error("a missing file passes")
	}
}

func TestRunBuildCmdError(t *testing.T) {
	var lines []string
	cmd := buildCommand(context.Background(), "sh", "-c", "for i in $(seq 1 30); do echo line$i; done; echo oops >&2; exit 3")
	_, err := runBuildCmd(context.Background(), cmd, "the step", func(l string) { lines = append(lines, l) })
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"the step", "sh -c", "exit status 3", "line30", "oops"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "line1\n") {
		t.Errorf("error %q holds all the output, not its end", err)
	}
	if len(lines) != 31 {
		t.Errorf("%d lines passed on, want 31", len(lines))
	}
	out, err := runBuildCmd(context.Background(), buildCommand(context.Background(), "sh", "-c", "echo out; echo err >&2"), "ok", nil)
	if err != nil || string(out) != "out\n" {
		t.Errorf("got %q, %v; want the standard output only", out, err)
	}
}

// TestBuildImage builds a real image: debootstrap, apt-get download and
// mkfs.ext4, about a minute the first time.
func TestBuildImage(t *testing.T) {
	if os.Getenv("RUNAGENT_TEST_NO_MICROVM") == "1" {
		t.Skip("RUNAGENT_TEST_NO_MICROVM=1: this machine does not build microVM images")
	}
	// The build cache of the default image (`make microvm-image` fills
	// it): a first build here would take a minute of debootstrap. The
	// image itself goes to a fresh folder.
	tmp := t.TempDir()
	var progress bytes.Buffer
	o := BuildOptions{Out: filepath.Join(tmp, "image"), Cache: filepath.Join(filepath.Dir(DefaultImageDir()), "cache"), Progress: &progress}
	defer func() { t.Logf("progress:\n%s", progress.String()) }()
	ctx := context.Background()
	if _, err := Build(ctx, o); err != nil {
		t.Fatal(err)
	}
	im, err := LoadImage(o.Out)
	if err != nil {
		t.Fatal(err)
	}
	buildCheckManifest(t, im)
	first := buildFileHashes(t, o.Out)

	progress.Reset()
	start := time.Now()
	if _, err := Build(ctx, o); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("the cached build took %s", took)
	}
	if strings.Contains(progress.String(), "debootstrap ") || !strings.Contains(progress.String(), "cached") {
		t.Errorf("the second build did not use the cache:\n%s", progress.String())
	}
	if second := buildFileHashes(t, o.Out); !reflect.DeepEqual(first, second) {
		t.Errorf("the same cache gave other bytes:\nfirst  %v\nsecond %v", first, second)
	}

	root := filepath.Join(o.Out, RootFile)
	out, err := exec.Command("debugfs", "-R", "cat "+GuestScriptPath, root).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", GuestScriptPath, err)
	}
	if !bytes.Equal(out, GuestFiles()[GuestScriptPath]) {
		t.Errorf("%s in %s is not the guest supervisor", GuestScriptPath, RootFile)
	}
	if out, err := exec.Command("e2fsck", "-fn", root).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn %s: %v\n%s", RootFile, err, out)
	}
}

func buildCheckManifest(t *testing.T, im *Image) {
	t.Helper()
	m := im.Manifest
	if !regexp.MustCompile(`^\d+\.\d+\.\d+-\S+$`).MatchString(m.Kernel) {
		t.Errorf("kernel %q", m.Kernel)
	}
	if !regexp.MustCompile(`^3\.\d+$`).MatchString(m.Python) {
		t.Errorf("python %q", m.Python)
	}
	if m.Packages["python3"] == "" || m.Packages["busybox-static"] == "" || m.Packages["linux-image-"+m.Kernel] == "" {
		t.Errorf("packages lack python3, busybox-static or linux-image-%s: %v", m.Kernel, m.Packages)
	}
	for _, f := range []string{KernelFile, InitrdFile, RootFile} {
		b, err := os.ReadFile(filepath.Join(im.Dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(b); m.Files[f] != hex.EncodeToString(sum[:]) {
			t.Errorf("manifest has %s's sha256 as %q", f, m.Files[f])
		}
	}
	if m.GuestHash != GuestHash() || m.Format != ImageFormat || m.Built.IsZero() {
		t.Errorf("manifest %+v", m)
	}
}

func buildFileHashes(t *testing.T, dir string) map[string]string {
	t.Helper()
	sums := map[string]string{}
	for _, f := range []string{KernelFile, InitrdFile, RootFile} {
		s, err := imageFileSHA256(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		sums[f] = s
	}
	return sums
}
