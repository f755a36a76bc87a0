package microvm

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"time"

	"github.com/runagent-go/runagent/internal/pyrunner"
)

// The guest's own code, baked into the image: the initramfs's /init and the
// supervisor that runs as the guest's PID 1.
var (
	//go:embed guest/init.sh
	initScript []byte
	//go:embed guest/guest.py
	guestScript []byte
)

// ImageFormat is the layout of an image folder this driver reads.
const ImageFormat = 1

// The files of an image folder.
const (
	KernelFile   = "vmlinuz"
	InitrdFile   = "initrd.img"
	RootFile     = "root.ext4"
	ManifestFile = "manifest.json"
)

// Guest paths, fixed by the image.
const (
	GuestScriptPath = "/opt/runagent/guest.py"
	// GuestRunnerPath is the runner's folder (pyrunner.Dir), which the
	// interpreter runs: python3 /opt/runagent/runagent_runner --fd 3.
	GuestRunnerPath = "/opt/runagent/" + pyrunner.Dir
	GuestPython     = "/usr/bin/python3"
	GuestAgentDir   = "/agent"
	GuestVenv       = "/venv"
	// GuestPersistDir is where the guest mounts a user's persistent
	// folders' disk (persist.go).
	GuestPersistDir = "/persist"
	GuestUID        = 1000
)

// Manifest describes a built image: what it was built from, so that a
// rebuild from the same inputs can be checked, and which guest code it
// holds, so that the driver refuses an image another version built.
type Manifest struct {
	Format int `json:"format"`
	// GuestHash is GuestHash() of the runagent that built the image.
	GuestHash string `json:"guest_hash"`
	Suite     string `json:"suite"`
	Mirror    string `json:"mirror"`
	// Kernel is the guest kernel's release ("6.1.0-56-cloud-amd64").
	Kernel string `json:"kernel"`
	// Python is the guest interpreter's version ("3.11"): an agent's
	// virtualenv must be for the same one.
	Python string `json:"python"`
	// Packages are the Debian packages in the image and their versions.
	Packages map[string]string `json:"packages"`
	// Files are the image's files and their sha256.
	Files map[string]string `json:"files"`
	Built time.Time         `json:"built"`
}

// GuestFiles are the files of runagent's own that go into an image, by
// their path in the guest: /init (the initramfs's), the supervisor and
// every file of the runner, under GuestRunnerPath.
func GuestFiles() map[string][]byte {
	m := map[string][]byte{
		"/init":         initScript,
		GuestScriptPath: guestScript,
	}
	for name, b := range pyrunner.Files() {
		m[path.Join(GuestRunnerPath, name)] = b
	}
	return m
}

// guestRootFiles are the paths of GuestFiles that go into the root file
// system (all but the initramfs's /init), sorted.
func guestRootFiles() []string {
	var out []string
	for name := range GuestFiles() {
		if name != "/init" {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// GuestHash identifies the guest code of this build of runagent: an image
// must have been built with the same.
func GuestHash() string {
	h := sha256.New()
	files := GuestFiles()
	for _, name := range append([]string{"/init"}, guestRootFiles()...) {
		b := files[name]
		fmt.Fprintf(h, "%s %d\n", name, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// DefaultImageDir is where `runagent microvm image build` puts the image
// and where the driver looks for it: $RUNAGENT_MICROVM_IMAGE, else
// microvm/image in RunAgent's cache folder.
func DefaultImageDir() string {
	if d := os.Getenv("RUNAGENT_MICROVM_IMAGE"); d != "" {
		return d
	}
	// The CLI's cache folder (cli.CacheDir): $RUNAGENT_CACHE_DIR, else ~/.runagent.
	cache := os.Getenv("RUNAGENT_CACHE_DIR")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		cache = filepath.Join(home, ".runagent")
	}
	return filepath.Join(cache, "microvm", "image")
}

// Image is a built guest image.
type Image struct {
	Dir string
	Manifest
}

func (im *Image) KernelPath() string { return filepath.Join(im.Dir, KernelFile) }
func (im *Image) InitrdPath() string { return filepath.Join(im.Dir, InitrdFile) }
func (im *Image) RootPath() string   { return filepath.Join(im.Dir, RootFile) }

// ErrNoImage is returned by LoadImage when there is no image to load.
var ErrNoImage = errors.New("no microVM image")

// LoadImage reads the image in dir and checks it is complete and was built
// by this version of runagent.
func LoadImage(dir string) (*Image, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s: build one with `runagent microvm image build --out %s`", ErrNoImage, dir, dir)
	}
	if err != nil {
		return nil, err
	}
	im := &Image{Dir: dir}
	if err := json.Unmarshal(b, &im.Manifest); err != nil {
		return nil, fmt.Errorf("microVM image %s: %s: %v; rebuild it with `runagent microvm image build --out %s`", dir, ManifestFile, err, dir)
	}
	if im.Format != ImageFormat {
		return nil, fmt.Errorf("microVM image %s has format %d, this runagent reads %d: rebuild it with `runagent microvm image build --out %s`", dir, im.Format, ImageFormat, dir)
	}
	if im.GuestHash != GuestHash() {
		return nil, fmt.Errorf("microVM image %s holds the guest code of another runagent version (%s, this one is %s): rebuild it with `runagent microvm image build --out %s`", dir, im.GuestHash, GuestHash(), dir)
	}
	for _, f := range []string{KernelFile, InitrdFile, RootFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return nil, fmt.Errorf("microVM image %s is incomplete (%v): rebuild it with `runagent microvm image build --out %s`", dir, err, dir)
		}
	}
	return im, nil
}

// ID names the image's contents, for snapshot keys: a snapshot is only
// valid for the image it was taken with.
func (im *Image) ID() string {
	h := sha256.New()
	for _, f := range []string{KernelFile, InitrdFile, RootFile} {
		fmt.Fprintf(h, "%s %s\n", f, im.Files[f])
	}
	h.Write([]byte(im.GuestHash))
	return hex.EncodeToString(h.Sum(nil))[:16]
}
