package manager

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/runagent-go/runagent/internal/sandbox"
)

// Deployment is how an agent version runs: the server's defaults, with the
// optional "deployment" section of its runagent.config.json over them.
type Deployment struct {
	MinInstances      int
	MaxInstances      int
	TargetConcurrency float64
	MaxConcurrency    int // calls at once per instance
	MaxQueue          int
	IdleTimeout       time.Duration // scale to zero after this long idle (with min 0)
	MemoryMB          int
	CPUSeconds        float64
	CPUs              float64 // cores' worth of CPU per instance (0: no cap)
	MaxPids           int
	CallTimeout       time.Duration
	// Sandbox is the driver that isolates the instances; an agent may ask
	// for a stronger one than the server's default, never a weaker one.
	Sandbox string
	// Network lets a sandboxed instance reach the network.
	Network   bool
	WorkDirMB int // size of the writable work directory and /tmp in a sandbox
	OpenFiles int // descriptors per process
	// MinNodes is how many nodes of a cluster run the version while it is
	// held (more under load); a single server ignores it.
	MinNodes int
	// PersistentQuotaMB bounds what one user's persistent folders may hold
	// (checked before each of the user's calls).
	PersistentQuotaMB int
}

// DefaultDeployment is what a server uses without flags.
var DefaultDeployment = Deployment{
	MinInstances: 0, MaxInstances: 4, TargetConcurrency: 4, MaxConcurrency: 16, MaxQueue: 100,
	IdleTimeout: 60 * time.Second, MemoryMB: 1024, MaxPids: 256, CallTimeout: 5 * time.Minute,
	Sandbox: "process", WorkDirMB: 256, OpenFiles: 1024, MinNodes: 2,
	PersistentQuotaMB: 100,
}

// deploymentFields are the keys of the config section, with how each is set
// (a message if the value is wrong).
var deploymentFields = map[string]func(d *Deployment, v any) string{
	"sandbox": func(d *Deployment, v any) string {
		name, ok := v.(string)
		if !ok {
			return "expected a string"
		}
		if err := sandbox.CheckName(name); err != nil {
			return "must be one of " + strings.Join(sandbox.Names(), ", ")
		}
		d.Sandbox = name
		return ""
	},
	"network": func(d *Deployment, v any) string {
		b, ok := v.(bool)
		if !ok {
			return "expected true or false"
		}
		d.Network = b
		return ""
	},
}

// numericFields are the settings that take a number.
var numericFields = map[string]func(d *Deployment, v float64) string{
	"work_dir_mb":   func(d *Deployment, v float64) string { d.WorkDirMB = int(v); return whole(v, 1) },
	"open_files":    func(d *Deployment, v float64) string { d.OpenFiles = int(v); return whole(v, 16) },
	"min_nodes":     func(d *Deployment, v float64) string { d.MinNodes = int(v); return whole(v, 1) },
	"min_instances": func(d *Deployment, v float64) string { d.MinInstances = int(v); return whole(v, 0) },
	"max_instances": func(d *Deployment, v float64) string { d.MaxInstances = int(v); return whole(v, 1) },
	"target_concurrency": func(d *Deployment, v float64) string {
		d.TargetConcurrency = v
		if v <= 0 {
			return "must be more than 0"
		}
		return ""
	},
	"max_concurrency":      func(d *Deployment, v float64) string { d.MaxConcurrency = int(v); return whole(v, 1) },
	"max_queue":            func(d *Deployment, v float64) string { d.MaxQueue = int(v); return whole(v, 1) },
	"idle_timeout_seconds": func(d *Deployment, v float64) string { d.IdleTimeout = seconds(v); return positive(v) },
	"memory_mb":            func(d *Deployment, v float64) string { d.MemoryMB = int(v); return whole(v, 0) },
	"cpu_seconds":          func(d *Deployment, v float64) string { d.CPUSeconds = v; return nonNegative(v) },
	"cpus": func(d *Deployment, v float64) string {
		d.CPUs = v
		if !(v >= 0) || v > 1024 || (v > 0 && v < 0.01) {
			return "must be 0 (no cap) or a number of cores from 0.01 (e.g. 0.5, 2)"
		}
		return ""
	},
	"max_pids":             func(d *Deployment, v float64) string { d.MaxPids = int(v); return whole(v, 0) },
	"persistent_quota_mb":  func(d *Deployment, v float64) string { d.PersistentQuotaMB = int(v); return whole(v, 1) },
	"call_timeout_seconds": func(d *Deployment, v float64) string { d.CallTimeout = seconds(v); return positive(v) },
}

func init() {
	for k, set := range numericFields {
		deploymentFields[k] = func(d *Deployment, v any) string {
			n, ok := number(v)
			if !ok {
				return "expected a number"
			}
			return set(d, n)
		}
	}
}

func seconds(v float64) time.Duration { return time.Duration(v * float64(time.Second)) }

func whole(v float64, least int) string {
	if v != math.Trunc(v) || v < float64(least) || v > 1e9 {
		return fmt.Sprintf("must be a whole number of at least %d", least)
	}
	return ""
}

func positive(v float64) string {
	if !(v > 0) || v > 1e7 {
		return "must be a number of seconds more than 0"
	}
	return ""
}

func nonNegative(v float64) string {
	if !(v >= 0) || v > 1e9 {
		return "must be 0 (no limit) or more"
	}
	return ""
}

// ParseDeployment applies a config's "deployment" section (nil: none) over
// defaults. Every problem is reported, each naming its field.
func ParseDeployment(section any, defaults Deployment) (Deployment, error) {
	d := defaults
	if section == nil {
		return d, nil
	}
	m, ok := section.(map[string]any)
	if !ok {
		return d, fmt.Errorf("deployment: expected an object like {\"max_instances\": 4}, got %T", section)
	}
	var problems []string
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		set, known := deploymentFields[k]
		if !known {
			names := make([]string, 0, len(deploymentFields))
			for n := range deploymentFields {
				names = append(names, n)
			}
			sort.Strings(names)
			problems = append(problems, fmt.Sprintf("deployment.%s: unknown setting; the settings are %s", k, strings.Join(names, ", ")))
			continue
		}
		if msg := set(&d, m[k]); msg != "" {
			problems = append(problems, fmt.Sprintf("deployment.%s: %s, got %v", k, msg, m[k]))
		}
	}
	if len(problems) == 0 && d.MinInstances > d.MaxInstances {
		problems = append(problems, fmt.Sprintf("deployment.min_instances: %d is more than max_instances %d", d.MinInstances, d.MaxInstances))
	}
	if len(problems) > 0 {
		return defaults, fmt.Errorf("%s", strings.Join(problems, "\n"))
	}
	return d, nil
}

func number(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	case uint64:
		return float64(n), true
	}
	return 0, false
}

// Capped bounds d by the server's ceilings: an agent may ask for less than
// the operator allows, never more.
func (d Deployment) Capped(ceiling Deployment) Deployment {
	if ceiling.MaxInstances > 0 && d.MaxInstances > ceiling.MaxInstances {
		d.MaxInstances = ceiling.MaxInstances
	}
	if d.MinInstances > d.MaxInstances {
		d.MinInstances = d.MaxInstances
	}
	if ceiling.MemoryMB > 0 && (d.MemoryMB == 0 || d.MemoryMB > ceiling.MemoryMB) {
		d.MemoryMB = ceiling.MemoryMB
	}
	if ceiling.PersistentQuotaMB > 0 && (d.PersistentQuotaMB == 0 || d.PersistentQuotaMB > ceiling.PersistentQuotaMB) {
		d.PersistentQuotaMB = ceiling.PersistentQuotaMB
	}
	if ceiling.MaxPids > 0 && (d.MaxPids == 0 || d.MaxPids > ceiling.MaxPids) {
		d.MaxPids = ceiling.MaxPids
	}
	if ceiling.CPUSeconds > 0 && (d.CPUSeconds == 0 || d.CPUSeconds > ceiling.CPUSeconds) {
		d.CPUSeconds = ceiling.CPUSeconds
	}
	if ceiling.CPUs > 0 && (d.CPUs == 0 || d.CPUs > ceiling.CPUs) {
		d.CPUs = ceiling.CPUs
	}
	if ceiling.CallTimeout > 0 && d.CallTimeout > ceiling.CallTimeout {
		d.CallTimeout = ceiling.CallTimeout
	}
	if ceiling.WorkDirMB > 0 && (d.WorkDirMB == 0 || d.WorkDirMB > ceiling.WorkDirMB) {
		d.WorkDirMB = ceiling.WorkDirMB
	}
	if ceiling.OpenFiles > 0 && (d.OpenFiles == 0 || d.OpenFiles > ceiling.OpenFiles) {
		d.OpenFiles = ceiling.OpenFiles
	}
	if sandbox.Strength[d.Sandbox] < sandbox.Strength[ceiling.Sandbox] {
		d.Sandbox = ceiling.Sandbox
	}
	return d
}
