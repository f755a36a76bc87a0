package microvm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runagent-go/runagent/internal/sandbox/mountinfo"
)

// BuildOptions say where and from what `runagent microvm image build`
// builds the guest image.
type BuildOptions struct {
	// Out is the image folder (DefaultImageDir() if "").
	Out string
	// Cache keeps the base root file system and the downloaded packages
	// between builds (default: "cache" next to Out).
	Cache string
	// Suite is the Debian release of the root file system ("bookworm").
	Suite string
	// Mirror is the Debian mirror debootstrap uses. (The kernel and
	// busybox come from the host's own apt sources.)
	Mirror string
	// Refresh re-runs debootstrap and re-downloads the packages even if
	// they are cached.
	Refresh bool
	// Progress gets a line per step; nil discards them.
	Progress io.Writer
}

const (
	// The kernel is Debian's cloud flavour: small, with the virtio drivers
	// as modules that the initramfs loads.
	kernelMetaPackage = "linux-image-cloud-amd64"
	busyboxPackage    = "busybox-static"
	// baseInclude is what debootstrap adds to its minimal base.
	baseInclude = "python3"
	// buildEpoch is every time the image records (file system creation,
	// inode change and access times, the mtime of the files the build
	// writes), so that the same inputs give the same bytes.
	buildEpoch = 1704067200 // 2024-01-01T00:00:00Z
)

// guestModules are the kernel modules init.sh loads, in its order, by
// their path under lib/modules/<release>/ without ".ko".
var guestModules = []string{
	"kernel/drivers/virtio/virtio_ring",
	"kernel/drivers/virtio/virtio",
	"kernel/drivers/virtio/virtio_mmio",
	"kernel/drivers/block/virtio_blk",
	"kernel/drivers/char/virtio_console",
	"kernel/net/core/failover",
	"kernel/drivers/net/net_failover",
	"kernel/drivers/net/virtio_net",
}

// hostTools are the programs the build runs and the Debian packages that
// have them.
var hostTools = []struct{ name, pkg string }{
	{"debootstrap", "debootstrap"},
	{"apt-get", "apt"},
	{"apt-cache", "apt"},
	{"dpkg-deb", "dpkg"},
	{"dpkg-query", "dpkg"},
	{"mkfs.ext4", "e2fsprogs"},
	{"debugfs", "e2fsprogs"},
	{"cp", "coreutils"},
}

func (o BuildOptions) withDefaults() BuildOptions {
	if o.Out == "" {
		o.Out = DefaultImageDir()
	}
	o.Out = filepath.Clean(o.Out)
	if o.Cache == "" {
		o.Cache = filepath.Join(filepath.Dir(o.Out), "cache")
	}
	if o.Suite == "" {
		o.Suite = "bookworm"
	}
	if o.Mirror == "" {
		o.Mirror = "http://deb.debian.org/debian"
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return o
}

// Build builds the microVM guest image in o.Out from Debian packages: a
// debootstrap root file system with Python (root.ext4), Debian's cloud
// kernel (vmlinuz) and an initramfs of busybox, the virtio modules and
// runagent's /init (initrd.img). The same cache gives the same bytes.
func Build(ctx context.Context, o BuildOptions) (*Image, error) {
	o = o.withDefaults()
	if err := checkHost(); err != nil {
		return nil, err
	}
	if err := checkOut(o.Out); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Cache, 0o755); err != nil {
		return nil, err
	}
	unlock, err := lockCache(o.Cache)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// What an interrupted build left: the lock says no build runs now.
	for _, pattern := range []string{"stage-*", "apt-*"} {
		stale, _ := filepath.Glob(filepath.Join(o.Cache, pattern))
		for _, s := range stale {
			os.RemoveAll(s)
		}
	}
	b := &builder{o: o}
	start := time.Now()
	im, err := b.build(ctx)
	if err != nil {
		return nil, err
	}
	b.logf("image %s built in %s", o.Out, buildSince(start))
	return im, nil
}

// checkHost names every missing tool and its package at once.
func checkHost() error {
	if os.Geteuid() != 0 {
		return errors.New("building the microVM image needs root (debootstrap installs packages as root and the image holds root-owned files): run it with sudo")
	}
	var missing, pkgs []string
	for _, t := range hostTools {
		if _, err := exec.LookPath(t.name); err != nil {
			missing = append(missing, t.name)
			if !slices.Contains(pkgs, t.pkg) {
				pkgs = append(pkgs, t.pkg)
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("building the microVM image needs %s: install with `apt-get install %s`",
			strings.Join(missing, ", "), strings.Join(pkgs, " "))
	}
	return nil
}

// checkOut refuses to replace a folder that is not an image: the build
// replaces Out as a whole.
func checkOut(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) || err == nil && len(entries) == 0 {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, ManifestFile)); err == nil {
		return nil
	}
	return fmt.Errorf("%s is not a microVM image folder (it has no %s) and the build would replace it: choose another --out or remove it", dir, ManifestFile)
}

// lockCache keeps two builds from sharing a cache's half-built folders.
func lockCache(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another microVM image build is using the cache %s", dir)
	}
	return func() { f.Close() }, nil
}

type builder struct {
	o BuildOptions
}

// debPkg is a Debian package the build downloads.
type debPkg struct {
	Name, Version, File, Hash string
}

func (b *builder) build(ctx context.Context) (*Image, error) {
	in, err := b.inputs(ctx)
	if err != nil {
		return nil, err
	}
	tmp := b.o.Out + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	python, err := b.assemble(ctx, in, tmp)
	if err != nil {
		return nil, err
	}
	m := Manifest{Format: ImageFormat, GuestHash: GuestHash(), Suite: b.o.Suite, Mirror: b.o.Mirror,
		Kernel: in.release, Python: python, Packages: in.pkgs, Built: time.Now().UTC()}
	if err := writeManifest(tmp, m); err != nil {
		return nil, err
	}
	if err := replaceBuildDir(tmp, b.o.Out); err != nil {
		return nil, err
	}
	return LoadImage(b.o.Out)
}

// buildInputs are the cached trees an image is assembled from.
type buildInputs struct {
	base, kernel, busybox string // trees in the cache
	release               string // the kernel's
	pkgs                  map[string]string
}

func (b *builder) inputs(ctx context.Context) (*buildInputs, error) {
	in := &buildInputs{}
	var err error
	if in.base, err = b.base(ctx); err != nil {
		return nil, err
	}
	if in.pkgs, err = b.basePackages(ctx, in.base); err != nil {
		return nil, err
	}
	kernelPkg, err := b.resolveKernel(ctx)
	if err != nil {
		return nil, err
	}
	debs, err := b.download(ctx, kernelPkg, busyboxPackage)
	if err != nil {
		return nil, err
	}
	if in.kernel, err = b.extract(ctx, debs[kernelPkg], "kernel"); err != nil {
		return nil, err
	}
	if in.busybox, err = b.extract(ctx, debs[busyboxPackage], "busybox"); err != nil {
		return nil, err
	}
	for _, d := range debs {
		in.pkgs[d.Name] = d.Version
	}
	in.release, err = kernelRelease(in.kernel)
	return in, err
}

// assemble writes the image's three files into dir and returns the
// guest's Python version.
func (b *builder) assemble(ctx context.Context, in *buildInputs, dir string) (string, error) {
	if err := copyImageFile(filepath.Join(in.kernel, "boot", "vmlinuz-"+in.release), filepath.Join(dir, KernelFile)); err != nil {
		return "", fmt.Errorf("guest kernel: %w", err)
	}
	if err := b.initrd(ctx, filepath.Join(dir, InitrdFile), in.kernel, in.release, in.busybox); err != nil {
		return "", err
	}
	return b.root(ctx, in.base, filepath.Join(dir, RootFile))
}

// writeManifest completes m with the files' hashes and writes it to dir.
func writeManifest(dir string, m Manifest) error {
	m.Files = map[string]string{}
	for _, f := range []string{KernelFile, InitrdFile, RootFile} {
		sum, err := imageFileSHA256(filepath.Join(dir, f))
		if err != nil {
			return err
		}
		m.Files[f] = sum
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, ManifestFile), append(b, '\n'), 0o644)
}

func (b *builder) logf(format string, args ...any) {
	fmt.Fprintf(b.o.Progress, format+"\n", args...)
}

func buildSince(t time.Time) string {
	d := time.Since(t)
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(100 * time.Millisecond).String()
}

func buildMiB(n int64) string { return fmt.Sprintf("%d MiB", (n+1<<20-1)>>20) }

// --- base root file system -------------------------------------------------

// baseDir is the cached debootstrap for the suite, mirror and package
// list: another of those is another base.
func (b *builder) baseDir() string {
	h := sha256.Sum256([]byte(strings.Join([]string{"minbase", b.o.Suite, b.o.Mirror, baseInclude}, "\n")))
	return filepath.Join(b.o.Cache, fmt.Sprintf("base-%s-%x", b.o.Suite, h[:6]))
}

func (b *builder) base(ctx context.Context) (string, error) {
	dir := b.baseDir()
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() && !b.o.Refresh {
		b.logf("base root file system: cached in %s", dir)
		return dir, nil
	}
	tmp := dir + ".tmp"
	if err := removeBuildTree(tmp); err != nil {
		return "", err
	}
	b.logf("debootstrap %s from %s (about a minute) ...", b.o.Suite, b.o.Mirror)
	start := time.Now()
	dl := &debootstrapLog{out: b.o.Progress, prefix: "  debootstrap: "}
	cmd := buildCommand(ctx, "debootstrap", "--variant=minbase", "--include="+baseInclude, b.o.Suite, tmp, b.o.Mirror)
	_, err := runBuildCmd(ctx, cmd, "debootstrap", dl.line)
	dl.flush()
	if err != nil {
		// The half-built tree stays for its debootstrap/debootstrap.log;
		// the next build removes it. What debootstrap mounted must not.
		unmountBuildTree(tmp)
		if ctx.Err() != nil {
			return "", err
		}
		return "", fmt.Errorf("%w\n(the partial tree and its debootstrap/debootstrap.log are in %s)", err, tmp)
	}
	if err := stripBase(tmp); err != nil {
		return "", fmt.Errorf("stripping the base root file system: %w", err)
	}
	if err := replaceBuildDir(tmp, dir); err != nil {
		return "", err
	}
	size, _, err := treeUsage(dir)
	if err != nil {
		return "", err
	}
	b.logf("base root file system (%s) in %s, cached in %s", buildMiB(size), buildSince(start), dir)
	return dir, nil
}

// baseStrip are what the guest never reads: documentation, translations
// and apt's and the installation's caches and logs.
var baseStrip = []struct {
	path     string
	contents bool // remove what the folder holds, not the folder
}{
	{"usr/share/doc", false},
	{"usr/share/man", false},
	{"usr/share/info", false},
	{"usr/share/locale", false},
	{"var/cache/apt", true},
	{"var/lib/apt/lists", true},
	{"var/log", true},
}

func stripBase(dir string) error {
	for _, s := range baseStrip {
		p := filepath.Join(dir, s.path)
		if !s.contents {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
			continue
		}
		entries, err := os.ReadDir(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := os.RemoveAll(filepath.Join(p, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

func (b *builder) basePackages(ctx context.Context, base string) (map[string]string, error) {
	cmd := buildCommand(ctx, "dpkg-query", "--admindir="+filepath.Join(base, "var/lib/dpkg"), "-W",
		"-f", "${db:Status-Abbrev} ${Package} ${Version}\n")
	out, err := runBuildCmd(ctx, cmd, "listing the base's packages", nil)
	if err != nil {
		return nil, err
	}
	pkgs := parsePackages(out)
	if pkgs["python3"] == "" {
		return nil, fmt.Errorf("the base root file system %s has no python3 package: rebuild it with --refresh", base)
	}
	return pkgs, nil
}

// parsePackages reads dpkg-query's "<status> <package> <version>" lines,
// keeping the installed ("ii") packages.
func parsePackages(out []byte) map[string]string {
	pkgs := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "ii" {
			pkgs[f[1]] = f[2]
		}
	}
	return pkgs
}

// debootstrapLog passes debootstrap's output on as progress, with the
// per-package lines ("I: Retrieving adduser 3.134", a hundred of each)
// summed up as one line per run.
type debootstrapLog struct {
	out    io.Writer
	prefix string
	verb   string // of the current run of per-package lines
	first  string // its first line
	n      int
	start  time.Time
}

// perPackageRuns maps debootstrap's per-package verbs to the run they
// count in: "Validating x" follows each "Retrieving x".
var perPackageRuns = map[string]string{"Retrieving": "Retrieving", "Validating": "Retrieving",
	"Extracting": "Extracting", "Unpacking": "Unpacking", "Configuring": "Configuring"}

func (d *debootstrapLog) line(l string) {
	l = strings.TrimSpace(l)
	if l == "" {
		return
	}
	verb, rest, _ := strings.Cut(strings.TrimPrefix(l, "I: "), " ")
	run := perPackageRuns[verb]
	if strings.HasPrefix(l, "I: ") && run != "" && len(strings.Fields(rest)) <= 2 && !strings.Contains(rest, "packages") {
		if run != d.verb {
			d.flush()
			d.verb, d.first, d.start = run, l, time.Now()
		}
		if verb == run {
			d.n++
		}
		return
	}
	d.flush()
	fmt.Fprintf(d.out, "%s%s\n", d.prefix, l)
}

// flush ends the current run of per-package lines: one line is shown as
// it was, more are counted.
func (d *debootstrapLog) flush() {
	switch {
	case d.n > 1:
		fmt.Fprintf(d.out, "%sI: %s %d packages (%s)\n", d.prefix, d.verb, d.n, buildSince(d.start))
	case d.first != "":
		fmt.Fprintf(d.out, "%s%s\n", d.prefix, d.first)
	}
	d.verb, d.first, d.n = "", "", 0
}

// --- kernel and busybox ----------------------------------------------------

// resolveKernel names the kernel package the cloud kernel's meta package
// currently depends on ("linux-image-6.1.0-56-cloud-amd64").
func (b *builder) resolveKernel(ctx context.Context) (string, error) {
	cmd := buildCommand(ctx, "apt-cache", "depends", kernelMetaPackage)
	out, err := runBuildCmd(ctx, cmd, "resolving the guest kernel", nil)
	if err != nil {
		return "", aptHint(err)
	}
	pkg := parseKernelDepends(out)
	if pkg == "" {
		return "", fmt.Errorf("resolving the guest kernel: `apt-cache depends %s` names no linux-image package:\n%s", kernelMetaPackage, bytes.TrimSpace(out))
	}
	return pkg, nil
}

var kernelDepends = regexp.MustCompile(`(?m)^\s*\|?Depends:\s*(linux-image-\S+)`)

func parseKernelDepends(out []byte) string {
	m := kernelDepends.FindSubmatch(out)
	if m == nil {
		return ""
	}
	return string(m[1])
}

// aptHint adds the usual fix to apt's "no such package" errors: the
// package lists are missing (a fresh container) or stale.
func aptHint(err error) error {
	s := err.Error()
	for _, sign := range []string{"Unable to locate package", "No packages found", "has no installation candidate",
		"Can't select", "Can't find a source to download", "404  Not Found", "404 Not Found"} {
		if strings.Contains(s, sign) {
			return fmt.Errorf("%w\nthe package lists are missing or out of date: run `apt-get update` and build again", err)
		}
	}
	return err
}

// download fetches the packages' .deb files into the cache's debs folder
// unless a file with the hash apt expects is already there.
func (b *builder) download(ctx context.Context, names ...string) (map[string]debPkg, error) {
	dir := filepath.Join(b.o.Cache, "debs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// apt leaves out the files already in its working directory: ask in
	// an empty one to hear of every package.
	empty, err := os.MkdirTemp(b.o.Cache, "apt-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(empty)
	cmd := buildCommand(ctx, "apt-get", append([]string{"download", "--print-uris"}, names...)...)
	cmd.Dir = empty
	out, err := runBuildCmd(ctx, cmd, "looking up "+strings.Join(names, ", "), nil)
	if err != nil {
		return nil, aptHint(err)
	}
	debs, err := parsePrintURIs(out)
	if err != nil {
		return nil, err
	}
	var need []string
	for _, name := range names {
		d, ok := debs[name]
		if !ok {
			return nil, fmt.Errorf("`apt-get download --print-uris` did not list %s:\n%s", name, bytes.TrimSpace(out))
		}
		if b.o.Refresh || checkHash(filepath.Join(dir, d.File), d.Hash) != nil {
			os.Remove(filepath.Join(dir, d.File))
			need = append(need, name)
		}
	}
	if len(need) == 0 {
		b.logf("packages %s: cached in %s", strings.Join(names, ", "), dir)
		return debs, nil
	}
	b.logf("downloading %s ...", strings.Join(need, ", "))
	start := time.Now()
	cmd = buildCommand(ctx, "apt-get", append([]string{"download"}, need...)...)
	cmd.Dir = dir // apt-get download saves into its working directory
	if _, err := runBuildCmd(ctx, cmd, "downloading "+strings.Join(need, ", "), nil); err != nil {
		return nil, aptHint(err)
	}
	for _, name := range need {
		if err := checkHash(filepath.Join(dir, debs[name].File), debs[name].Hash); err != nil {
			return nil, fmt.Errorf("downloading %s: %w", name, err)
		}
	}
	b.logf("downloaded %s in %s", strings.Join(need, ", "), buildSince(start))
	return debs, nil
}

// parsePrintURIs reads `apt-get download --print-uris` lines:
//
//	'http://.../busybox-static_1.35.0-4%2bdeb12u1%2bb1_amd64.deb' busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb 928188 SHA256:3d3f...
func parsePrintURIs(out []byte) (map[string]debPkg, error) {
	debs := map[string]debPkg{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "'") {
			continue
		}
		parts := strings.Split(strings.TrimSuffix(f[1], ".deb"), "_")
		if len(parts) != 3 || !strings.HasSuffix(f[1], ".deb") {
			return nil, fmt.Errorf("apt-get download --print-uris: unexpected file name %q", f[1])
		}
		version := strings.ReplaceAll(parts[1], "%3a", ":")
		debs[parts[0]] = debPkg{Name: parts[0], Version: version, File: f[1], Hash: f[3]}
	}
	return debs, nil
}

// checkHash checks a file against apt's "SHA256:hex" (or SHA512); other
// kinds are left to apt, which checked the download itself.
func checkHash(path, want string) error {
	kind, sum, _ := strings.Cut(want, ":")
	var h hash.Hash
	switch kind {
	case "SHA256":
		h = sha256.New()
	case "SHA512":
		h = sha512.New()
	default:
		_, err := os.Stat(path)
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != strings.ToLower(sum) {
		return fmt.Errorf("%s has %s %s, apt expects %s", path, kind, got, sum)
	}
	return nil
}

// extract unpacks a package into the cache (kind-version/).
func (b *builder) extract(ctx context.Context, d debPkg, kind string) (string, error) {
	dir := filepath.Join(b.o.Cache, kind+"-"+strings.ReplaceAll(d.Version, ":", "%3a"))
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() && !b.o.Refresh {
		return dir, nil
	}
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", err
	}
	start := time.Now()
	cmd := buildCommand(ctx, "dpkg-deb", "-x", filepath.Join(b.o.Cache, "debs", d.File), tmp)
	if _, err := runBuildCmd(ctx, cmd, "unpacking "+d.Name, nil); err != nil {
		return "", err
	}
	if err := replaceBuildDir(tmp, dir); err != nil {
		return "", err
	}
	b.logf("unpacked %s %s in %s", d.Name, d.Version, buildSince(start))
	return dir, nil
}

// kernelRelease is the release the kernel package installs modules for.
func kernelRelease(kdir string) (string, error) {
	entries, err := os.ReadDir(filepath.Join(kdir, "lib", "modules"))
	if err != nil {
		return "", fmt.Errorf("guest kernel: %w", err)
	}
	if len(entries) != 1 || !entries[0].IsDir() {
		return "", fmt.Errorf("guest kernel: want one release in %s, found %d entries", filepath.Join(kdir, "lib", "modules"), len(entries))
	}
	return entries[0].Name(), nil
}

// --- initramfs -------------------------------------------------------------

func (b *builder) initrd(ctx context.Context, out, kdir, release, bbdir string) error {
	start := time.Now()
	busybox, err := os.ReadFile(filepath.Join(bbdir, "bin", "busybox"))
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	modules, err := readModules(ctx, filepath.Join(kdir, "lib", "modules", release))
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := writeCPIO(f, initrdEntries(busybox, modules)); err != nil {
		f.Close()
		return fmt.Errorf("initramfs: %w", err)
	}
	fi, err := f.Stat()
	if err == nil {
		err = f.Close()
	}
	if err != nil {
		return err
	}
	b.logf("packed %s (%s: busybox, %d modules, /init) in %s", InitrdFile, buildMiB(fi.Size()), len(modules), buildSince(start))
	return nil
}

// readModules reads guestModules from the kernel's module tree by their
// file name ("virtio_blk.ko"). Compressed modules (newer Debian kernels)
// are decompressed with the host's xz or zstd, as busybox's insmod takes
// plain ones only; a driver built into the kernel needs no module.
func readModules(ctx context.Context, modDir string) (map[string][]byte, error) {
	builtin, _ := os.ReadFile(filepath.Join(modDir, "modules.builtin"))
	modules := map[string][]byte{}
	for _, m := range guestModules {
		name := filepath.Base(m) + ".ko"
		data, err := readModule(ctx, filepath.Join(modDir, m))
		if errors.Is(err, fs.ErrNotExist) && bytes.Contains(builtin, []byte(m+".ko\n")) {
			continue
		}
		if err != nil {
			return nil, err
		}
		modules[name] = data
	}
	return modules, nil
}

func readModule(ctx context.Context, path string) ([]byte, error) {
	data, err := os.ReadFile(path + ".ko")
	if !errors.Is(err, fs.ErrNotExist) {
		return data, err
	}
	for _, c := range []struct{ ext, tool, pkg string }{{".ko.xz", "xz", "xz-utils"}, {".ko.zst", "zstd", "zstd"}} {
		if _, err := os.Stat(path + c.ext); err != nil {
			continue
		}
		if _, err := exec.LookPath(c.tool); err != nil {
			return nil, fmt.Errorf("%s is compressed: install %s with `apt-get install %s`", path+c.ext, c.tool, c.pkg)
		}
		return runBuildCmd(ctx, buildCommand(ctx, c.tool, "-dc", path+c.ext), "decompressing "+filepath.Base(path)+c.ext, nil)
	}
	return nil, fmt.Errorf("kernel module %s.ko: %w", path, fs.ErrNotExist)
}

// initrdEntries are the initramfs's files: busybox, the modules (flat in
// /lib/modules, where init.sh loads them from), /init and the console
// the kernel opens before /init runs.
func initrdEntries(busybox []byte, modules map[string][]byte) []cpioEntry {
	entries := []cpioEntry{
		{Name: "/dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Major: 5, Minor: 1},
		{Name: "/bin/busybox", Mode: 0o755, Data: busybox},
		{Name: "/init", Mode: 0o755, Data: GuestFiles()["/init"]},
	}
	for _, d := range []string{"/bin", "/dev", "/proc", "/sys", "/newroot", "/lib", "/lib/modules"} {
		entries = append(entries, cpioEntry{Name: d, Mode: fs.ModeDir | 0o755})
	}
	for name, data := range modules {
		entries = append(entries, cpioEntry{Name: "/lib/modules/" + name, Mode: 0o644, Data: data})
	}
	return entries
}

// --- root file system ------------------------------------------------------

func (b *builder) root(ctx context.Context, base, out string) (string, error) {
	start := time.Now()
	stage, err := os.MkdirTemp(b.o.Cache, "stage-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(stage)
	// cp -a keeps what matters in a root file system that Go's library
	// does not copy: owners, device nodes, hard links, and the times
	// Python's cached bytecode is checked against.
	if _, err := runBuildCmd(ctx, buildCommand(ctx, "cp", "-a", base+"/.", stage+"/"), "copying the base root file system", nil); err != nil {
		return "", err
	}
	touched, err := customizeRoot(stage)
	if err != nil {
		return "", fmt.Errorf("customising the root file system: %w", err)
	}
	python, err := pythonVersion(stage)
	if err != nil {
		return "", err
	}
	if err := pinTimes(stage, touched); err != nil {
		return "", err
	}
	usage, inodes, err := treeUsage(stage)
	if err != nil {
		return "", err
	}
	if err := b.mkfs(ctx, stage, out, usage, inodes); err != nil {
		return "", err
	}
	fi, err := os.Stat(out)
	if err != nil {
		return "", err
	}
	b.logf("packed %s (%s, Python %s) in %s", RootFile, buildMiB(fi.Size()), python, buildSince(start))
	return python, nil
}

// pinTimes gives what the build wrote a fixed time. The rest keeps the
// packages' times: Python checks its cached bytecode against them.
func pinTimes(dir string, rels []string) error {
	tv := unix.NsecToTimeval(buildEpoch * int64(time.Second))
	for _, rel := range rels {
		if err := unix.Lutimes(filepath.Join(dir, rel), []unix.Timeval{tv, tv}); err != nil {
			return err
		}
	}
	return nil
}

// customizeRoot turns the base into the guest's root: runagent's guest
// code, the folders init.sh mounts on, the unprivileged agent user and the
// network files. It returns the paths it wrote, relative to dir.
func customizeRoot(dir string) ([]string, error) {
	r := &rootEditor{dir: dir}
	r.mkdir("opt/runagent")
	files := GuestFiles()
	for _, p := range guestRootFiles() {
		r.write(p, files[p], 0o644)
	}
	for _, d := range []string{GuestAgentDir, GuestVenv, "/work", "/mnt", GuestPersistDir} {
		r.mkdir(d)
	}
	r.addLine("etc/passwd", fmt.Sprintf("agent:x:%d:%d:runagent agent:/work:/usr/sbin/nologin", GuestUID, GuestUID))
	r.addLine("etc/group", fmt.Sprintf("agent:x:%d:", GuestUID))
	r.write("etc/resolv.conf", []byte("nameserver 10.0.2.3\n"), 0o644) // QEMU's user-mode DNS
	r.write("etc/hostname", []byte("runagent\n"), 0o644)
	r.write("etc/hosts", []byte("127.0.0.1\tlocalhost runagent\n::1\tlocalhost ip6-localhost ip6-loopback\n"), 0o644)
	// The agent runs as uid 1000: the password hashes stay root's.
	for _, f := range []string{"etc/shadow", "etc/gshadow"} {
		r.protect(f)
	}
	if r.err != nil {
		return nil, r.err
	}
	sort.Strings(r.touched)
	return r.touched, nil
}

// rootEditor edits a root file system tree, keeping the first error and
// the paths it changed (with their folders, whose times change too).
type rootEditor struct {
	dir     string
	touched []string
	err     error
}

func (r *rootEditor) path(rel string) string {
	return filepath.Join(r.dir, strings.TrimPrefix(rel, "/"))
}

func (r *rootEditor) touch(rel string) {
	for rel = strings.Trim(rel, "/"); rel != "." && rel != ""; rel = filepath.Dir(rel) {
		if !slices.Contains(r.touched, rel) {
			r.touched = append(r.touched, rel)
		}
	}
}

func (r *rootEditor) mkdir(rel string) {
	if r.err != nil {
		return
	}
	p := r.path(rel)
	if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
		return
	}
	if r.err = os.MkdirAll(p, 0o755); r.err == nil {
		r.err = os.Chmod(p, 0o755)
	}
	r.touch(rel)
}

// write replaces rel (a symlink too: resolv.conf often is one, and its
// target is outside the guest) with a root-owned file.
func (r *rootEditor) write(rel string, data []byte, mode fs.FileMode) {
	r.mkdir(filepath.Dir(rel))
	if r.err != nil {
		return
	}
	p := r.path(rel)
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		r.err = err
		return
	}
	if r.err = os.WriteFile(p, data, mode); r.err == nil {
		r.err = os.Chmod(p, mode)
	}
	r.touch(rel)
}

// addLine appends line to a passwd-style file unless an entry of its
// name is there; another entry with its id is an error.
func (r *rootEditor) addLine(rel, line string) {
	if r.err != nil {
		return
	}
	p := r.path(rel)
	old, err := os.ReadFile(p)
	if err != nil {
		r.err = err
		return
	}
	name, rest, _ := strings.Cut(line, ":")
	id := strings.Split(rest, ":")[1]
	for _, l := range strings.Split(string(old), "\n") {
		f := strings.Split(l, ":")
		if len(f) < 3 {
			continue
		}
		if f[0] == name {
			return
		}
		if f[2] == id {
			r.err = fmt.Errorf("%s: id %s is %s's, not %s's", rel, id, f[0], name)
			return
		}
	}
	if len(old) > 0 && !bytes.HasSuffix(old, []byte("\n")) {
		old = append(old, '\n')
	}
	r.write(rel, append(old, line+"\n"...), 0o644)
}

// protect makes a shadow file root:shadow 0640, as Debian has it.
func (r *rootEditor) protect(rel string) {
	if r.err != nil {
		return
	}
	if _, err := os.Lstat(r.path(rel)); errors.Is(err, fs.ErrNotExist) {
		return
	}
	gid, err := groupID(r.path("etc/group"), "shadow")
	if err != nil {
		r.err = err
		return
	}
	if r.err = os.Lchown(r.path(rel), 0, gid); r.err == nil {
		r.err = os.Chmod(r.path(rel), 0o640)
	}
}

func groupID(groupFile, name string) (int, error) {
	b, err := os.ReadFile(groupFile)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Split(l, ":")
		if len(f) >= 3 && f[0] == name {
			return strconv.Atoi(f[2])
		}
	}
	return 0, fmt.Errorf("%s has no group %s", groupFile, name)
}

var pythonName = regexp.MustCompile(`^python(\d+\.\d+)$`)

// pythonVersion is the guest's Python ("3.11"), from where
// /usr/bin/python3 points.
func pythonVersion(root string) (string, error) {
	target, err := os.Readlink(filepath.Join(root, strings.TrimPrefix(GuestPython, "/")))
	if err != nil {
		return "", fmt.Errorf("the root file system's Python: %w", err)
	}
	m := pythonName.FindStringSubmatch(filepath.Base(target))
	if m == nil {
		return "", fmt.Errorf("the root file system's %s points to %q, not to a pythonX.Y", GuestPython, target)
	}
	return m[1], nil
}

// treeUsage is the disk space a tree's files take (hard links once) and
// its number of distinct inodes.
func treeUsage(dir string) (size int64, inodes int, err error) {
	seen := map[[2]uint64]bool{}
	err = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			size += fi.Size()
			inodes++
			return nil
		}
		key := [2]uint64{uint64(st.Dev), uint64(st.Ino)}
		if !seen[key] {
			seen[key] = true
			size += int64(st.Blocks) * 512
			inodes++
		}
		return nil
	})
	return size, inodes, err
}

// ext4SizeMiB leaves room beyond the files for ext4's own metadata (inode
// tables, directories, bitmaps).
func ext4SizeMiB(usage int64) int64 {
	return (usage*6/5 + 32<<20 + 1<<20 - 1) >> 20
}

// ext4Inodes leaves a little room: the root is read-only, but a rebuild
// with a few more files should not fail.
func ext4Inodes(n int) int { return n + n/10 + 256 }

// derivedUUID is a UUID that depends on the inputs only, so that the
// same inputs give the same file system.
func derivedUUID(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\n")))
	u := h[:16]
	u[6] = u[6]&0x0f | 0x40 // version 4 layout, variant 10: a well-formed UUID
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

func (b *builder) mkfs(ctx context.Context, stage, out string, usage int64, inodes int) error {
	key := filepath.Base(b.baseDir()) + " " + GuestHash()
	env := append(os.Environ(),
		// e2fsprogs 1.47.0 takes its clock from E2FSPROGS_FAKE_TIME; later
		// releases honour SOURCE_DATE_EPOCH too.
		fmt.Sprintf("E2FSPROGS_FAKE_TIME=%d", buildEpoch), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", buildEpoch))
	cmd := buildCommand(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096", "-d", stage, "-L", "ra-root", "-O", "^has_journal",
		"-U", derivedUUID("uuid", key),
		"-E", "hash_seed="+derivedUUID("hash_seed", key)+",root_owner=0:0",
		"-N", strconv.Itoa(ext4Inodes(inodes)), out, fmt.Sprintf("%dM", ext4SizeMiB(usage)))
	cmd.Env = env
	if _, err := runBuildCmd(ctx, cmd, "making "+RootFile, nil); err != nil {
		return err
	}
	return pinInodeTimes(ctx, out, env)
}

// pinInodeTimes sets every inode's change and access time to buildEpoch:
// mkfs.ext4 -d copies them from the staging tree, where the kernel set the
// change times to when the build copied the files. mkfs allocates inodes
// in order from the first non-reserved one (11, lost+found), so the used
// ones are 11 up to the used count.
func pinInodeTimes(ctx context.Context, img string, env []string) error {
	cmd := buildCommand(ctx, "debugfs", "-R", "stats", img)
	out, err := runBuildCmd(ctx, cmd, "reading "+RootFile+"'s inode count", nil)
	if err != nil {
		return err
	}
	used, err := usedInodes(out)
	if err != nil {
		return err
	}
	var script bytes.Buffer
	for ino := 11; ino <= used; ino++ {
		fmt.Fprintf(&script, "sif <%d> ctime @%d\nsif <%d> atime @%d\n", ino, buildEpoch, ino, buildEpoch)
	}
	f, err := os.CreateTemp(filepath.Dir(img), "debugfs-*.txt")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(script.Bytes()); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	cmd = buildCommand(ctx, "debugfs", "-w", "-f", f.Name(), img)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stdout = io.Discard
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pinning %s's inode times: debugfs -w -f: %v: %s", RootFile, err, buildLastLines(stderr.String(), 10))
	}
	// debugfs reports a failed command on stderr and still exits 0.
	var problems []string
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		if l != "" && !strings.HasPrefix(l, "debugfs ") {
			problems = append(problems, l)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("pinning %s's inode times: debugfs: %s", RootFile, buildLastLines(strings.Join(problems, "\n"), 10))
	}
	return nil
}

// usedInodes reads the used inode count from debugfs's stats.
func usedInodes(stats []byte) (int, error) {
	var count, free = -1, -1
	for _, l := range strings.Split(string(stats), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(v))
		switch strings.TrimSpace(k) {
		case "Inode count":
			count = n
		case "Free inodes":
			free = n
		default:
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("debugfs stats: %q: %v", l, err)
		}
	}
	if count < 0 || free < 0 || free > count {
		return 0, errors.New("debugfs stats: no inode counts")
	}
	return count - free, nil
}

// --- files and commands ----------------------------------------------------

func copyImageFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func imageFileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// replaceDir puts the complete tmp in dir's place, so that dir is always
// either the old or the new one.
func replaceBuildDir(tmp, dir string) error {
	old := dir + ".old"
	if err := removeBuildTree(old); err != nil {
		return err
	}
	if err := os.Rename(dir, old); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return err
	}
	return removeBuildTree(old)
}

// removeTree removes dir after unmounting what an interrupted debootstrap
// may have left mounted in it: removing files under a bind mount of the
// host's /dev would remove the host's.
func removeBuildTree(dir string) error {
	if err := unmountBuildTree(dir); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

func unmountBuildTree(dir string) error {
	mounts, err := os.ReadFile(mountinfo.Path)
	if err != nil {
		return nil // no /proc (not Linux): nothing we could have mounted
	}
	points := mountinfo.Under(mounts, dir)
	for i := len(points) - 1; i >= 0; i-- { // the innermost first
		if out, err := exec.Command("umount", "-l", points[i]).CombinedOutput(); err != nil {
			return fmt.Errorf("%s is still mounted (umount: %v: %s): unmount it before building again", points[i], err, bytes.TrimSpace(out))
		}
	}
	return nil
}

// command is exec.CommandContext that asks the program to stop with
// SIGTERM when ctx ends, so that debootstrap's exit handler unmounts what
// it mounted in the target.
func buildCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	return cmd
}

// runCmd runs cmd and returns its standard output. Every output line goes
// to line (if not nil); a failure names the step, the command and its
// last lines of output.
func runBuildCmd(ctx context.Context, cmd *exec.Cmd, step string, line func(string)) ([]byte, error) {
	var stdout bytes.Buffer
	t := &buildOutputTail{line: line, keep: 15}
	cmd.Stdout = io.MultiWriter(&stdout, t)
	cmd.Stderr = t
	err := cmd.Run()
	t.flush()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("%s: %w", step, ctx.Err())
	}
	if err != nil {
		return nil, fmt.Errorf("%s: `%s`: %v\n%s", step, strings.Join(cmd.Args, " "), err, strings.Join(t.last, "\n"))
	}
	return stdout.Bytes(), nil
}

// lineTail splits output into lines, passing each on and keeping the last
// few. Standard output and error write to it from two goroutines.
type buildOutputTail struct {
	mu      sync.Mutex
	line    func(string)
	keep    int
	last    []string
	partial []byte
}

func (t *buildOutputTail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.partial = append(t.partial, p...)
	for {
		i := bytes.IndexByte(t.partial, '\n')
		if i < 0 {
			break
		}
		t.add(string(t.partial[:i]))
		t.partial = t.partial[i+1:]
	}
	return len(p), nil
}

func (t *buildOutputTail) flush() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.partial) > 0 {
		t.add(string(t.partial))
		t.partial = nil
	}
}

func (t *buildOutputTail) add(l string) {
	l = strings.TrimRight(l, "\r")
	if t.line != nil {
		t.line(l)
	}
	if strings.TrimSpace(l) == "" {
		return
	}
	t.last = append(t.last, l)
	if len(t.last) > t.keep {
		t.last = t.last[len(t.last)-t.keep:]
	}
}

func buildLastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
