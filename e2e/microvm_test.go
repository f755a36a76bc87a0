package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// TestMicroVMNetwork: an agent whose config allows the network reaches this
// host's other addresses through QEMU's user network, but not its loopback
// services, which QEMU would forward 10.0.2.2 to (the guest blackholes it).
func TestMicroVMNetwork(t *testing.T) {
	attackPrecheck(t, "microvm")
	hostIP := nonLoopbackIPv4(t)
	loPort, loAccepted := greetingListener(t, "127.0.0.1:0", "loopback")
	extPort, _ := greetingListener(t, net.JoinHostPort(hostIP, "0"), "external")

	dir := attackFixture(t, "netprobe")
	s := serve(t, dir, "7a1c0e52-3b9d-4e6f-8a21-5c4d3e2f1a0b", serveOpts{args: []string{"--sandbox", "microvm", "--network=true"}, wait: 2 * time.Minute})
	got, _ := s.result(t, "connect", nil, map[string]any{"targets": [][]any{{"10.0.2.2", loPort}, {hostIP, extPort}}}).(map[string]any)
	lo, ext := fmt.Sprint(got[fmt.Sprintf("10.0.2.2:%d", loPort)]), fmt.Sprint(got[fmt.Sprintf("%s:%d", hostIP, extPort)])
	if !strings.HasPrefix(lo, "refused") || loAccepted.Load() != 0 {
		t.Errorf("the host's loopback through 10.0.2.2: %s (the loopback listener accepted %d); want it blocked", lo, loAccepted.Load())
	}
	if ext != "connected: external" {
		t.Errorf("the host's address %s: %s; want the network to work", hostIP, ext)
	}
}

// nonLoopbackIPv4 is an IPv4 address of this host other than the loopback.
func nonLoopbackIPv4(t testing.TB) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
	}
	t.Fatalf("this host has no IPv4 address but the loopback: %v", addrs)
	return ""
}
