package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/sandbox/microvm"
)

// fakeMicroVMImage writes an image folder LoadImage accepts.
func fakeMicroVMImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	m := microvm.Manifest{Format: microvm.ImageFormat, GuestHash: microvm.GuestHash(), Suite: "bookworm",
		Mirror: "http://deb.debian.org/debian", Kernel: "6.1.0-56-cloud-amd64", Python: "3.11",
		Packages: map[string]string{"python3": "3.11.2-1+b1", "busybox-static": "1:1.35.0-4", "linux-image-6.1.0-56-cloud-amd64": "6.1.192-2", "bash": "5.2"},
		Files:    map[string]string{}, Built: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	for _, f := range []string{microvm.KernelFile, microvm.InitrdFile, microvm.RootFile} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
		m.Files[f] = "sum-of-" + f
	}
	b, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, microvm.ManifestFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestMicroVMImageShow(t *testing.T) {
	dir := fakeMicroVMImage(t)
	t.Setenv("RUNAGENT_MICROVM_IMAGE", dir)
	missing := filepath.Join(t.TempDir(), "none")
	for _, tc := range []struct {
		name    string
		args    []string
		want    []string
		wantErr string
	}{
		{"default folder", []string{"microvm", "image", "show"},
			[]string{dir, "6.1.0-56-cloud-amd64", "3.11", "4 (busybox-static 1:1.35.0-4, linux-image-6.1.0-56-cloud-amd64 6.1.192-2, python3 3.11.2-1+b1", "sha256:sum-of-root.ext4"}, ""},
		{"--out", []string{"microvm", "image", "show", "--out", dir}, []string{"bookworm from http://deb.debian.org/debian"}, ""},
		{"--json", []string{"--json", "microvm", "image", "show"}, []string{`"kernel":"6.1.0-56-cloud-amd64"`, `"bash":"5.2"`}, ""},
		{"no image", []string{"microvm", "image", "show", "--out", missing}, nil, "runagent microvm image build --out " + missing},
		{"stray argument", []string{"microvm", "image", "show", "x"}, nil, "unknown command"},
		{"build stray argument", []string{"microvm", "image", "build", "x"}, nil, "unknown command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := runCLI(t, "", tc.args...)
			if tc.wantErr != "" {
				if res.err == nil || !strings.Contains(res.err.Error(), tc.wantErr) {
					t.Errorf("error %v, want one with %q", res.err, tc.wantErr)
				}
				return
			}
			if res.err != nil {
				t.Fatal(res.err)
			}
			for _, w := range tc.want {
				if !strings.Contains(res.stdout, w) {
					t.Errorf("output lacks %q:\n%s", w, res.stdout)
				}
			}
		})
	}
}

func TestPrintBuiltImageNextStep(t *testing.T) {
	const next = "runagent server --sandbox microvm (or runagent serve PATH --sandbox microvm)"
	dir := fakeMicroVMImage(t)
	im, err := microvm.LoadImage(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, env, out, want string
	}{
		{"default folder", dir, "", "Next: " + next + "\n"},
		{"other folder", filepath.Join(t.TempDir(), "elsewhere"), dir, "Next: runagent server --sandbox microvm --microvm-image " + dir + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("RUNAGENT_MICROVM_IMAGE", tc.env)
			var out strings.Builder
			a := &app{stdout: &out, stderr: &out}
			if err := a.printBuiltImage(im, tc.out, 3*time.Second); err != nil {
				t.Fatal(err)
			}
			if !strings.HasSuffix(out.String(), tc.want) || !strings.Contains(out.String(), "python  3.11") {
				t.Errorf("output:\n%s\nwant it to end with %q", out.String(), tc.want)
			}
		})
	}
}
