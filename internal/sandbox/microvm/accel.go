package microvm

import (
	"os"
	"strings"
	"time"
)

// kvmDeadline is how long a probe VM may take to boot under KVM: a guest
// that is not up by then gains nothing from the acceleration. (Under
// emulation this image boots in 2-3 s; under working KVM in well under 1.)
const kvmDeadline = 3 * time.Second

// acceleration decides, once, between hardware virtualization and QEMU's
// emulation. /dev/kvm existing proves nothing (a paravirtualized KVM can
// accept the VM and never run a stock kernel usefully), so "auto" boots a
// probe VM under KVM with a deadline.
func (d *Driver) acceleration() string {
	d.accelOnce.Do(func() {
		switch d.mo.Accel {
		case "kvm", "tcg":
			d.accel = d.mo.Accel
			return
		}
		d.accel = "tcg"
		why := "/dev/kvm cannot be opened"
		if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
			f.Close()
			t0 := time.Now()
			if err := d.probeKVM(); err == nil {
				d.accel = "kvm"
				d.log.Info("microVM: using KVM", "probe_boot", time.Since(t0).Round(time.Millisecond))
				return
			} else {
				why = "a probe VM under KVM did not boot within " + kvmDeadline.String() + ": " + firstLine(err.Error())
			}
		}
		d.log.Warn("microVM: hardware virtualization is not usable, so VMs run under QEMU's software emulation (TCG): "+
			"they are much slower, and the isolation is weaker than under KVM (the guest runs on QEMU's translator, "+
			"a larger attack surface than the CPU's virtualization)", "reason", why)
	})
	return d.accel
}

func (d *Driver) probeKVM() error {
	cfg := vmConfig{image: d.image, memoryMiB: minMemoryMiB, cpus: 1, workMiB: 1, accel: "kvm", kernelArgs: d.kernelArgs}
	v, err := launch(d.qemu, d.vmDir(), cfg, nil, time.Now().Add(kvmDeadline))
	if err != nil {
		return err
	}
	defer func() {
		v.kill()
		<-v.proc.Done()
		os.RemoveAll(v.dir)
	}()
	_, err = v.await("hello", time.Now().Add(kvmDeadline))
	return err
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// Acceleration is how this driver's VMs run: "kvm", or "tcg" for QEMU's
// emulation. In auto mode the first call probes (a few seconds at most).
func (d *Driver) Acceleration() string { return d.acceleration() }
