package placement

import (
	"reflect"
	"testing"
	"time"
)

var (
	t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	k  = Key{Agent: "a", Version: 1}
)

func node(id string, mem int64, versions map[Key]Load) Node {
	return Node{ID: id, Fresh: true, Drivers: []string{"process"}, MemoryAvailable: mem, Versions: versions}
}

func version(min, minNodes int) Version {
	return Version{Key: k, MinInstances: min, MaxInstances: 2, MaxConcurrency: 4, MinNodes: minNodes, Driver: "process",
		MemoryBytes: 100, IdleTimeout: time.Minute}
}

func TestDecide(t *testing.T) {
	idle := map[Key]Load{k: {Instances: 1, MaxInstances: 2}}
	full := map[Key]Load{k: {Instances: 2, InFlight: 8, MaxInstances: 2}}
	tests := []struct {
		name    string
		v       Version
		nodes   []Node
		current []string
		want    []string // nil: no change
		del     bool     // the version is placed nowhere
	}{
		{"held with min_instances: placed on min_nodes, most memory first", version(1, 2),
			[]Node{node("n1", 500, nil), node("n2", 900, nil), node("n3", 700, nil)}, nil, []string{"n2", "n3"}, false},
		{"min_nodes beyond the eligible nodes: as many as there are", version(1, 3),
			[]Node{node("n1", 500, nil)}, nil, []string{"n1"}, false},
		{"a draining node leaves; another joins", version(1, 1),
			[]Node{{ID: "n1", Fresh: true, Draining: true, Drivers: []string{"process"}}, node("n2", 500, nil)}, []string{"n1"}, []string{"n2"}, false},
		{"a silent node leaves", version(1, 1),
			[]Node{{ID: "n1", Drivers: []string{"process"}}, node("n2", 500, nil)}, []string{"n1"}, []string{"n2"}, false},
		{"a node without the sandbox is never picked", Version{Key: k, MinInstances: 1, MaxInstances: 1, MinNodes: 1, Driver: "gvisor", IdleTimeout: time.Minute},
			[]Node{node("n1", 900, nil), {ID: "n2", Fresh: true, Drivers: []string{"process", "gvisor"}}}, nil, []string{"n2"}, false},
		{"a node short of memory is never picked", version(1, 1),
			[]Node{node("n1", 50, nil), node("n2", 150, nil)}, nil, []string{"n2"}, false},
		{"a node that refused the version is not asked again", version(1, 1),
			[]Node{{ID: "n1", Fresh: true, Drivers: []string{"process"}, MemoryAvailable: 900, Refused: map[Key]bool{k: true}}, node("n2", 100, nil)}, nil, []string{"n2"}, false},
		{"every holding node full: one more joins", version(1, 1),
			[]Node{node("n1", 500, full), node("n2", 500, nil), node("n3", 400, nil)}, []string{"n1"}, []string{"n1", "n2"}, false},
		{"one holding node not full: none joins", version(1, 1),
			[]Node{node("n1", 500, full), node("n2", 500, idle), node("n3", 400, nil)}, []string{"n1", "n2"}, nil, false},
		{"a full node still starting the version elsewhere: none joins", version(1, 1),
			[]Node{node("n1", 500, full), node("n2", 500, nil), node("n3", 400, nil)}, []string{"n1", "n2"}, nil, false},
		{"no eligible node: it stays where it is", version(1, 1),
			[]Node{node("n1", 500, full)}, []string{"n1"}, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := New()
			got := s.Decide(t0, []Version{tc.v}, tc.nodes, map[Key][]string{k: tc.current})
			nodes, changed := got[k]
			switch {
			case tc.want == nil && !tc.del && changed:
				t.Errorf("changed to %v, want no change", nodes)
			case tc.want != nil && !reflect.DeepEqual(nodes, tc.want):
				t.Errorf("placed on %v, want %v", nodes, tc.want)
			}
		})
	}
}

// A version with min_instances 0 is held while calls come and placed
// nowhere after its idle timeout; a call that asks brings it back.
func TestScaleToZeroAndActivate(t *testing.T) {
	s := New()
	v := version(0, 1)
	load := func(calls int64) []Node {
		return []Node{node("n1", 500, map[Key]Load{k: {Instances: 1, Calls: calls, MaxInstances: 2}})}
	}
	cur := map[Key][]string{k: {"n1"}}
	if got := s.Decide(t0, []Version{v}, load(1), cur); len(got) != 0 {
		t.Fatalf("first sight: %v, want no change (held for an idle timeout)", got)
	}
	if got := s.Decide(t0.Add(50*time.Second), []Version{v}, load(2), cur); len(got) != 0 {
		t.Fatalf("a call 50 s in: %v, want no change", got)
	}
	if got := s.Decide(t0.Add(100*time.Second), []Version{v}, load(2), cur); len(got) != 0 {
		t.Fatalf("50 s after the last call: %v, want no change", got)
	}
	got := s.Decide(t0.Add(111*time.Second), []Version{v}, load(2), cur)
	if nodes, ok := got[k]; !ok || len(nodes) != 0 {
		t.Fatalf("61 s after the last call: %v, want placed nowhere", got)
	}
	cur = map[Key][]string{}
	if got := s.Decide(t0.Add(120*time.Second), []Version{v}, load(2), cur); len(got) != 0 {
		t.Fatalf("at zero: %v, want no change", got)
	}
	s.Activate(k, t0.Add(130*time.Second))
	if got := s.Decide(t0.Add(130*time.Second), []Version{v}, load(2), cur); !reflect.DeepEqual(got[k], []string{"n1"}) {
		t.Fatalf("after a call asked: %v, want n1", got)
	}
}

// Above min_nodes, a node leaves once the calls have fitted in one node
// fewer at half capacity for a whole idle timeout; never below min_nodes.
func TestScaleIn(t *testing.T) {
	s := New()
	v := version(1, 1) // capacity per node: 2 instances x 4 calls
	cur := map[Key][]string{k: {"n1", "n2"}}
	nodes := func(inFlight int) []Node {
		return []Node{node("n1", 500, map[Key]Load{k: {Instances: 2, InFlight: inFlight, MaxInstances: 2}}),
			node("n2", 500, map[Key]Load{k: {Instances: 1, MaxInstances: 2}})}
	}
	if got := s.Decide(t0, []Version{v}, nodes(6), cur); len(got) != 0 {
		t.Fatalf("busy: %v", got)
	}
	if got := s.Decide(t0.Add(30*time.Second), []Version{v}, nodes(3), cur); len(got) != 0 {
		t.Fatalf("low for 30 s: %v", got)
	}
	got := s.Decide(t0.Add(61*time.Second), []Version{v}, nodes(3), cur)
	if !reflect.DeepEqual(got[k], []string{"n1"}) {
		t.Fatalf("low for a whole idle timeout: %v, want n2 (fewest calls) to leave", got)
	}
	if got := s.Decide(t0.Add(200*time.Second), []Version{v}, nodes(0), map[Key][]string{k: {"n1"}}); len(got) != 0 {
		t.Fatalf("at min_nodes: %v, want no change", got)
	}
}

// A version no longer active (deleted, or replaced) is placed nowhere.
func TestGoneVersion(t *testing.T) {
	s := New()
	old := Key{Agent: "a", Version: 1}
	got := s.Decide(t0, nil, []Node{node("n1", 500, nil)}, map[Key][]string{old: {"n1"}})
	if nodes, ok := got[old]; !ok || nodes != nil {
		t.Fatalf("%v, want the old version removed", got)
	}
}

func TestPick(t *testing.T) {
	nodes := []Node{node("n1", 100, nil), node("n2", 900, nil), node("n3", 500, nil)}
	v := version(1, 1)
	if got := Pick(nodes, v, nil); !reflect.DeepEqual(got, []string{"n2"}) {
		t.Errorf("new agent: %v", got)
	}
	if got := Pick(nodes, v, []string{"n1", "n3"}); !reflect.DeepEqual(got, []string{"n1", "n3"}) {
		t.Errorf("rollout: %v, want the nodes holding the old version", got)
	}
	v.MinNodes = 2
	if got := Pick(nodes, v, []string{"n1", "gone"}); !reflect.DeepEqual(got, []string{"n1", "n2"}) {
		t.Errorf("rollout with a holder gone: %v", got)
	}
}
