package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/runagent-go/runagent/internal/sandbox/microvm"
)

func (a *app) microvmCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "microvm",
		Short: "Build and inspect the guest image of the microvm sandbox",
		Long: `The microvm sandbox (runagent server --sandbox microvm) runs every agent
instance in its own QEMU microVM. Its guest image (a Debian root file system
with Python, Debian's cloud kernel and runagent's initramfs) is built once on
the host, as root:

  runagent microvm image build      debootstrap, kernel, initramfs, root.ext4
  runagent microvm image show       what an image holds`,
	}
	image := &cobra.Command{
		Use:   "image",
		Short: "Build or show the microVM guest image",
	}
	image.AddCommand(a.microvmImageBuildCommand(), a.microvmImageShowCommand())
	cmd.AddCommand(image)
	return cmd
}

func (a *app) microvmImageBuildCommand() *cobra.Command {
	var o microvm.BuildOptions
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build the guest image from Debian packages (needs root, debootstrap and e2fsprogs)",
		Long: `Build the microvm sandbox's guest image from Debian packages:
debootstrap a minimal root file system with Python (about a minute the first
time, then cached), download Debian's cloud kernel and busybox, and pack
vmlinuz, initrd.img and root.ext4 into the image folder. A rebuild from the
same cache is quick and gives the same bytes.

Needs root and: apt-get install debootstrap e2fsprogs`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Progress = a.stderr
			start := time.Now()
			im, err := microvm.Build(cmd.Context(), o)
			if err != nil {
				return err
			}
			return a.printBuiltImage(im, o.Out, time.Since(start))
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Out, "out", "", "image folder (default $RUNAGENT_MICROVM_IMAGE, else "+microvm.DefaultImageDir()+")")
	f.StringVar(&o.Cache, "cache", "", `build cache: base root file system and packages (default "cache" next to --out)`)
	f.StringVar(&o.Suite, "suite", "bookworm", "Debian release of the root file system")
	f.StringVar(&o.Mirror, "mirror", "http://deb.debian.org/debian", "Debian mirror for debootstrap")
	f.BoolVar(&o.Refresh, "refresh", false, "re-run debootstrap and re-download the packages even if cached")
	return cmd
}

func (a *app) printBuiltImage(im *microvm.Image, out string, took time.Duration) error {
	size := imageSize(im)
	if a.json {
		a.printJSON(map[string]any{"dir": im.Dir, "size_bytes": size, "manifest": im.Manifest})
		return nil
	}
	next := "runagent server --sandbox microvm (or runagent serve PATH --sandbox microvm)"
	if out != "" && filepath.Clean(out) != filepath.Clean(microvm.DefaultImageDir()) {
		next = "runagent server --sandbox microvm --microvm-image " + im.Dir
	}
	fmt.Fprintf(a.stdout, "Built the microVM image in %s.\n", took.Round(100*time.Millisecond))
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  image\t%s (%d MiB)\n", im.Dir, size>>20)
	fmt.Fprintf(tw, "  kernel\t%s\n", im.Manifest.Kernel)
	fmt.Fprintf(tw, "  python\t%s (agents' virtualenvs must be made with Python %s)\n", im.Python, im.Python)
	tw.Flush()
	fmt.Fprintf(a.stdout, "Next: %s\n", next)
	return nil
}

// imageSize is the apparent size of the image's files.
func imageSize(im *microvm.Image) int64 {
	var n int64
	for _, f := range []string{microvm.KernelFile, microvm.InitrdFile, microvm.RootFile, microvm.ManifestFile} {
		if fi, err := os.Stat(filepath.Join(im.Dir, f)); err == nil {
			n += fi.Size()
		}
	}
	return n
}

func (a *app) microvmImageShowCommand() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show what the guest image holds (its manifest)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				out = microvm.DefaultImageDir()
			}
			im, err := microvm.LoadImage(out)
			if err != nil {
				return err
			}
			if a.json {
				a.printJSON(im.Manifest)
				return nil
			}
			a.printImage(im)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "image folder (default $RUNAGENT_MICROVM_IMAGE, else "+microvm.DefaultImageDir()+")")
	return cmd
}

func (a *app) printImage(im *microvm.Image) {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "image\t%s (%d MiB, id %s)\n", im.Dir, imageSize(im)>>20, im.ID())
	fmt.Fprintf(tw, "built\t%s\n", im.Built.Local().Format("2006-01-02 15:04:05"))
	fmt.Fprintf(tw, "debian\t%s from %s\n", im.Suite, im.Mirror)
	fmt.Fprintf(tw, "kernel\t%s\n", im.Manifest.Kernel)
	fmt.Fprintf(tw, "python\t%s\n", im.Python)
	fmt.Fprintf(tw, "guest code\t%s\n", im.GuestHash)
	fmt.Fprintf(tw, "packages\t%s\n", packageSummary(im.Packages))
	files := make([]string, 0, len(im.Files))
	for f := range im.Files {
		files = append(files, f)
	}
	sort.Strings(files)
	for i, f := range files {
		label := ""
		if i == 0 {
			label = "files"
		}
		fmt.Fprintf(tw, "%s\t%-12s sha256:%s\n", label, f, im.Files[f])
	}
	tw.Flush()
}

// packageSummary counts the packages and names the ones that matter to
// an agent: the interpreter, the kernel and busybox (--json lists all).
func packageSummary(pkgs map[string]string) string {
	var key []string
	for name, v := range pkgs {
		if name == "python3" || name == "busybox-static" || strings.HasPrefix(name, "linux-image-") {
			key = append(key, name+" "+v)
		}
	}
	sort.Strings(key)
	return fmt.Sprintf("%d (%s; --json lists all)", len(pkgs), strings.Join(key, ", "))
}

// addMicroVMFlags adds the microvm sandbox's flags, shared by serve and server.
func addMicroVMFlags(f *pflag.FlagSet, o *microvm.Options) {
	f.StringVar(&o.Image, "microvm-image", "", "with --sandbox microvm: the guest image folder (default $RUNAGENT_MICROVM_IMAGE, else "+microvm.DefaultImageDir()+"; build it with runagent microvm image build)")
	f.StringVar(&o.Accel, "microvm-accel", "auto", "with --sandbox microvm: kvm, tcg (QEMU's emulation) or auto (use KVM if a probe VM boots under it in time)")
	f.IntVar(&o.Warm, "microvm-warm", 1, "with --sandbox microvm: VMs restored from each agent's snapshot kept ready for its next instances (0: none)")
	f.DurationVar(&o.WarmTTL, "microvm-warm-ttl", microvm.DefaultWarmTTL, "with --sandbox microvm: stop an agent's warm VMs when none of its instances started for this long (its snapshot goes after six times as long)")
}
