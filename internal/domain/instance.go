package domain

// Limits bound one agent instance; zero means no limit.
type Limits struct {
	MemoryBytes int64
	CPUSeconds  float64 // CPU time over the instance's life
	// CPUs caps the CPU time per wall-clock second, in cores (0.5: half a
	// core): a cgroup's CPU bandwidth, for the microvm driver also its
	// vCPUs (rounded up).
	CPUs         float64
	Pids         int   // processes plus threads
	OpenFiles    int   // descriptors per process
	WorkDirBytes int64 // size of the writable work directory, and of /tmp
}

// Usage is what an instance uses now.
type Usage struct {
	MemoryBytes int64
	CPUSeconds  float64 // user + system of its live processes
	Tasks       int     // processes and threads
	// LimitHit names a limit the kernel enforced (a cgroup's OOM kill, a
	// refused fork: LimitPids); a refused fork does not end the instance,
	// so the manager does.
	LimitHit Limit
}

// InstanceState is where an instance of an agent version is.
type InstanceState string

// Instance states.
const (
	StateStarting InstanceState = "starting"
	StateReady    InstanceState = "ready"
	StateDraining InstanceState = "draining"
)
