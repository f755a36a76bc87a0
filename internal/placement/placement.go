// Package placement decides which nodes of a cluster run each agent
// version. It is pure: the scheduler (the elected gateway) passes in what
// the nodes advertise and what the store holds, and writes back what Decide
// returns. The rules, in order:
//
//   - A node is eligible for a version when its advert is fresh, it is not
//     draining, it offers the version's sandbox driver and has the memory
//     of one instance available.
//   - A version is held while it has min_instances >= 1, or it took a call
//     (or a call asked for it) within its idle timeout; a version not held
//     is placed nowhere: scaled to zero across the cluster, and the next
//     call waits at the gateway while it is placed again.
//   - A held version runs on at least min_nodes nodes (as many as are
//     eligible), and on one more whenever every node holding it is full:
//     its pool there is at max_instances and the calls there fill them.
//   - A node that is no longer eligible leaves the version at once; above
//     min_nodes, one node leaves after the version's calls have fitted in
//     one node fewer at half their capacity for a whole idle timeout.
//   - New nodes are picked with the most memory available, then the
//     fewest instances, then by id, so that a decision is reproducible.
//
// Under load at most one node joins a version per decision, and one leaves
// at a time, so that the cluster moves in steps it can observe.
package placement

import (
	"cmp"
	"slices"
	"time"
)

// Key names one agent version.
type Key struct {
	Agent   string
	Version int
}

// Version is an agent version the store says is active.
type Version struct {
	Key
	MinInstances, MaxInstances int
	MaxConcurrency             int // calls at once per instance
	MinNodes                   int
	Driver                     string
	MemoryBytes                int64         // one instance's limit (0: none)
	IdleTimeout                time.Duration // scale to zero after this long without calls
}

// Load is what a node advertises for one version it runs.
type Load struct {
	Instances    int   // ready or starting
	InFlight     int   // calls running
	Queued       int   // calls waiting for an instance
	Calls        int64 // taken, ever (a rising count is activity)
	MaxInstances int
}

// Node is one node's advert.
type Node struct {
	ID              string
	Fresh, Draining bool
	Drivers         []string
	MemoryAvailable int64 // bytes; 0: unknown
	Instances       int
	Versions        map[Key]Load
	Refused         map[Key]bool // it failed to start these lately: not asked again yet
}

// Scheduler keeps what Decide needs across calls: when each version was
// last active, when its load was last high. Its state is soft: a new
// leader starts with none and only waits longer before scaling in.
type Scheduler struct {
	seen map[Key]*history
}

type history struct {
	active   time.Time        // the last call seen, or the last ask
	high     time.Time        // the last time the load needed every node
	calls    map[string]int64 // per node, the count last seen
	lastJoin time.Time
}

// New returns a scheduler with no history.
func New() *Scheduler { return &Scheduler{seen: map[Key]*history{}} }

// joinSettle is how long after a node joins a version before another may
// join for load: the first must have had time to start its instances.
const joinSettle = 10 * time.Second

// Activate records that a call found no node for k (it waits at a
// gateway): k is held from now.
func (s *Scheduler) Activate(k Key, now time.Time) { s.hist(k, now).active = now }

func (s *Scheduler) hist(k Key, now time.Time) *history {
	h := s.seen[k]
	if h == nil {
		h = &history{active: now, high: now, calls: map[string]int64{}}
		s.seen[k] = h
	}
	return h
}

// Decide returns the new node list of every version whose placement
// changes (an empty list: it runs nowhere), given the active versions,
// the nodes and the current placement.
func (s *Scheduler) Decide(now time.Time, versions []Version, nodes []Node, current map[Key][]string) map[Key][]string {
	byID := make(map[string]*Node, len(nodes))
	for i := range nodes {
		byID[nodes[i].ID] = &nodes[i]
	}
	out := map[Key][]string{}
	live := map[Key]bool{}
	for _, v := range versions {
		live[v.Key] = true
		h := s.hist(v.Key, now)
		cur := current[v.Key]
		var keep []string
		for _, id := range cur {
			if n := byID[id]; n != nil && eligible(n, v) {
				keep = append(keep, id)
			}
		}
		// Activity: a node's call count rose since the last decision.
		inFlight, capacity, full := 0, 0, len(keep) > 0
		for _, id := range keep {
			l, ok := byID[id].Versions[v.Key]
			if !ok {
				full = false // still starting it
				continue
			}
			if prev, seen := h.calls[id]; (seen && l.Calls > prev) || l.InFlight+l.Queued > 0 {
				h.active = now
			}
			h.calls[id] = l.Calls
			inFlight += l.InFlight + l.Queued
			maxInst := cmp.Or(l.MaxInstances, v.MaxInstances, 1)
			capacity += maxInst * max(v.MaxConcurrency, 1)
			if l.Instances < maxInst || l.InFlight+l.Queued < l.Instances*max(v.MaxConcurrency, 1) {
				full = false
			}
		}
		held := v.MinInstances > 0 || now.Sub(h.active) < v.IdleTimeout
		want := keep
		switch {
		case !held:
			want = nil
		case len(keep) < max(v.MinNodes, 1):
			want = fill(keep, max(v.MinNodes, 1), nodes, v)
		case full && now.Sub(h.lastJoin) >= joinSettle:
			want = join(keep, nodes, v)
		case len(keep) > max(v.MinNodes, 1):
			perNode := capacity / len(keep)
			if inFlight*2 > perNode*(len(keep)-1) {
				h.high = now
			} else if now.Sub(h.high) >= v.IdleTimeout {
				want = leave(keep, byID, v)
				h.high = now // the next one waits a whole idle timeout again
			}
		}
		if len(want) > len(keep) {
			h.lastJoin = now
		}
		if !slices.Equal(want, cur) {
			out[v.Key] = want
		}
	}
	for k := range current {
		if !live[k] {
			out[k] = nil // deleted, or replaced by a newer version
		}
	}
	for k := range s.seen {
		if !live[k] {
			delete(s.seen, k)
		}
	}
	return out
}

func eligible(n *Node, v Version) bool {
	if !n.Fresh || n.Draining || n.Refused[v.Key] {
		return false
	}
	if v.Driver != "" && !slices.Contains(n.Drivers, v.Driver) {
		return false
	}
	return n.MemoryAvailable == 0 || v.MemoryBytes == 0 || n.MemoryAvailable >= v.MemoryBytes
}

// join adds the best eligible node not in keep (keep itself if none).
func join(keep []string, nodes []Node, v Version) []string {
	var best *Node
	for i := range nodes {
		n := &nodes[i]
		if slices.Contains(keep, n.ID) || !eligible(n, v) {
			continue
		}
		if best == nil || better(n, best) {
			best = n
		}
	}
	if best == nil {
		return keep
	}
	out := append(slices.Clone(keep), best.ID)
	slices.Sort(out)
	return out
}

func better(a, b *Node) bool {
	if a.MemoryAvailable != b.MemoryAvailable {
		return a.MemoryAvailable > b.MemoryAvailable
	}
	if a.Instances != b.Instances {
		return a.Instances < b.Instances
	}
	return a.ID < b.ID
}

// leave drops the node of keep with the fewest calls of v in flight.
func leave(keep []string, byID map[string]*Node, v Version) []string {
	drop := ""
	least := 0
	for _, id := range keep {
		l := byID[id].Versions[v.Key]
		if n := l.InFlight + l.Queued; drop == "" || n < least || (n == least && id > drop) {
			drop, least = id, n
		}
	}
	return slices.DeleteFunc(slices.Clone(keep), func(id string) bool { return id == drop })
}

// Pick chooses the nodes for a new version of an agent whose active
// version runs on holding: as many nodes as those, and at least
// min_nodes (as many as are eligible), the holding ones first so that a
// rollout replaces instances where they are.
func Pick(nodes []Node, v Version, holding []string) []string {
	byID := make(map[string]*Node, len(nodes))
	for i := range nodes {
		byID[nodes[i].ID] = &nodes[i]
	}
	var out []string
	for _, id := range holding {
		if n := byID[id]; n != nil && eligible(n, v) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return fill(out, max(v.MinNodes, len(holding), 1), nodes, v)
}

// fill joins nodes to keep until it has n, or no eligible node is left.
func fill(keep []string, n int, nodes []Node, v Version) []string {
	for len(keep) < n {
		next := join(keep, nodes, v)
		if len(next) == len(keep) {
			break
		}
		keep = next
	}
	return keep
}
