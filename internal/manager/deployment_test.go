package manager

import (
	"strings"
	"testing"
)

func TestParseDeployment(t *testing.T) {
	defaults := DefaultDeployment
	cases := []struct {
		name    string
		section any
		check   func(d Deployment) bool
		wantErr string
	}{
		{"none", nil, func(d Deployment) bool { return d == defaults }, ""},
		{"numbers", map[string]any{"max_instances": 2.0, "memory_mb": 128.0, "work_dir_mb": 32.0},
			func(d Deployment) bool { return d.MaxInstances == 2 && d.MemoryMB == 128 && d.WorkDirMB == 32 }, ""},
		{"cpus", map[string]any{"cpus": 0.5}, func(d Deployment) bool { return d.CPUs == 0.5 }, ""},
		{"negative cpus", map[string]any{"cpus": -1.0}, nil, "deployment.cpus: must be 0 (no cap) or a number of cores"},
		{"sandbox and network", map[string]any{"sandbox": "namespace", "network": true},
			func(d Deployment) bool { return d.Sandbox == "namespace" && d.Network }, ""},
		{"unknown sandbox", map[string]any{"sandbox": "docker"}, nil, "deployment.sandbox: must be one of process, namespace, gvisor, microvm"},
		{"sandbox not a string", map[string]any{"sandbox": 1.0}, nil, "deployment.sandbox: expected a string"},
		{"network not a bool", map[string]any{"network": "yes"}, nil, "deployment.network: expected true or false"},
		{"number as string", map[string]any{"memory_mb": "128"}, nil, "deployment.memory_mb: expected a number"},
		{"fractional", map[string]any{"max_pids": 1.5}, nil, "deployment.max_pids: must be a whole number"},
		{"too few open files", map[string]any{"open_files": 3.0}, nil, "deployment.open_files: must be a whole number of at least 16"},
		{"unknown key", map[string]any{"gpus": 1.0}, nil, "deployment.gpus: unknown setting"},
		{"min over max", map[string]any{"min_instances": 3.0, "max_instances": 2.0}, nil, "min_instances: 3 is more than max_instances 2"},
		{"not an object", []any{1.0}, nil, "deployment: expected an object"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := ParseDeployment(c.section, defaults)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v; want it to contain %q", err, c.wantErr)
				}
				return
			}
			if err != nil || !c.check(d) {
				t.Fatalf("ParseDeployment = %+v, %v", d, err)
			}
		})
	}
}

func TestCappedSandboxNeverWeaker(t *testing.T) {
	ceiling := DefaultDeployment
	ceiling.Sandbox = "namespace"
	cases := map[string]string{"process": "namespace", "namespace": "namespace", "gvisor": "gvisor"}
	for asked, want := range cases {
		d := DefaultDeployment
		d.Sandbox = asked
		if got := d.Capped(ceiling).Sandbox; got != want {
			t.Errorf("agent asks %s on a %s server: gets %s, want %s", asked, ceiling.Sandbox, got, want)
		}
	}
}

func TestCappedCPUs(t *testing.T) {
	for _, c := range []struct{ asked, ceiling, want float64 }{
		{0, 0, 0}, {2, 0, 2}, {0, 1, 1}, {2, 1, 1}, {0.5, 1, 0.5},
	} {
		d := DefaultDeployment
		d.CPUs = c.asked
		ceiling := DefaultDeployment
		ceiling.CPUs = c.ceiling
		if got := d.Capped(ceiling).CPUs; got != c.want {
			t.Errorf("cpus %v under a ceiling of %v = %v, want %v", c.asked, c.ceiling, got, c.want)
		}
	}
}
