package storetest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

// logLines makes n lines of agent, "<prefix>0" to "<prefix>n-1", every
// third one of invocation inv.
func logLines(agent, prefix, inv string, n int) []domain.LogLine {
	out := make([]domain.LogLine, n)
	for i := range out {
		out[i] = domain.LogLine{AgentID: agent, Version: 1, Instance: "i1", Stream: "stdout",
			Line: fmt.Sprint(prefix, i), At: t0.Add(time.Duration(i) * time.Millisecond)}
		if i%3 == 0 {
			out[i].InvocationID = inv
		}
	}
	return out
}

// sameLine compares every field, the time with Equal.
func sameLine(a, b domain.LogLine) bool {
	if !a.At.Equal(b.At) {
		return false
	}
	a.At, b.At = time.Time{}, time.Time{}
	return a == b
}

func lineTexts(ls []domain.LogLine) string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.Line
	}
	return strings.Join(out, " ")
}

func testLogs(t *testing.T, open Opener) {
	ctx := context.Background()

	t.Run("append and read", func(t *testing.T) {
		s := open(t, "store")
		at := now()
		lines := []domain.LogLine{
			{AgentID: "a", Version: 1, Instance: "i1", InvocationID: "inv1", Stream: "stdout", Line: "one", At: at},
			{AgentID: "a", Version: 1, Instance: "i1", Stream: "stderr", Line: "two", At: at},
			{AgentID: "b", Version: 1, Instance: "i9", Stream: "stdout", Line: "other", At: at},
		}
		if err := s.AppendLogs(ctx, lines); err != nil {
			t.Fatal(err)
		}
		if lines[0].Seq == 0 || lines[1].Seq <= lines[0].Seq {
			t.Fatalf("seqs %d %d", lines[0].Seq, lines[1].Seq)
		}
		got, err := s.Logs(ctx, "a", "", 0, 0)
		if err != nil || len(got) != 2 || got[0].Line != "one" || got[0].InvocationID != "inv1" || got[1].Stream != "stderr" {
			t.Fatalf("logs %+v, %v", got, err)
		}
		if !sameLine(got[0], lines[0]) || !sameLine(got[1], lines[1]) {
			t.Errorf("lines read back as\n\t%+v\n\t%+v\nwant\n\t%+v\n\t%+v", got[0], got[1], lines[0], lines[1])
		}
		got, _ = s.Logs(ctx, "a", "", got[0].Seq, 0)
		if len(got) != 1 || got[0].Line != "two" {
			t.Fatalf("logs after: %+v", got)
		}
		got, _ = s.Logs(ctx, "a", "inv1", 0, 0)
		if len(got) != 1 {
			t.Fatalf("logs of inv1: %+v", got)
		}
		if n, err := s.PruneLogs(ctx, 1); err != nil || n != 1 {
			t.Fatalf("prune: %d, %v", n, err)
		}
		if got, err := s.Logs(ctx, "nobody", "", 0, 0); err != nil || len(got) != 0 {
			t.Fatalf("logs of an agent without any: %+v, %v", got, err)
		}
		if err := s.AppendLogs(ctx, nil); err != nil {
			t.Fatalf("appending no lines: %v", err)
		}
	})

	// Seq grows: within a call, from call to call, across agents, and past
	// pruned lines.
	t.Run("seq grows", func(t *testing.T) {
		s := open(t, "store")
		var last int64
		check := func(ls []domain.LogLine) {
			t.Helper()
			for _, l := range ls {
				if l.Seq <= last {
					t.Fatalf("seq %d of %q after %d", l.Seq, l.Line, last)
				}
				last = l.Seq
			}
		}
		for i, agent := range []string{"a", "b", "a", "c", "b"} {
			ls := logLines(agent, fmt.Sprint("x", i, "-"), "", 3)
			if err := s.AppendLogs(ctx, ls); err != nil {
				t.Fatal(err)
			}
			check(ls)
		}
		if _, err := s.PruneLogs(ctx, 0); err != nil {
			t.Fatal(err)
		}
		ls := logLines("a", "after prune ", "", 2)
		if err := s.AppendLogs(ctx, ls); err != nil {
			t.Fatal(err)
		}
		check(ls)
		if got, _ := s.Logs(ctx, "a", "", 0, 0); len(got) != 2 || got[0].Seq != ls[0].Seq || got[1].Seq != ls[1].Seq {
			t.Errorf("logs after a prune of everything: %+v", got)
		}
	})

	t.Run("after, limit and invocation", func(t *testing.T) {
		s := open(t, "store")
		a := logLines("a", "a", "inv", 10) // inv: a0 a3 a6 a9
		if err := s.AppendLogs(ctx, a); err != nil {
			t.Fatal(err)
		}
		if err := s.AppendLogs(ctx, logLines("b", "b", "inv", 4)); err != nil { // another agent's lines of the same id
			t.Fatal(err)
		}
		if err := s.AppendLogs(ctx, logLines("a", "late", "other", 2)); err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			inv   string
			after int64
			limit int
			want  string
		}{
			{"", 0, 0, "a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 late0 late1"},
			{"", 0, 3, "a0 a1 a2"},
			{"", a[4].Seq, 0, "a5 a6 a7 a8 a9 late0 late1"},
			{"", a[4].Seq, 2, "a5 a6"},
			{"", a[9].Seq + 1000, 0, ""},
			{"inv", 0, 0, "a0 a3 a6 a9"},
			{"inv", a[3].Seq, 0, "a6 a9"},
			{"inv", 0, 2, "a0 a3"},
			{"other", 0, 0, "late0"},
			{"nope", 0, 0, ""},
		}
		for _, tt := range tests {
			got, err := s.Logs(ctx, "a", tt.inv, tt.after, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if g := lineTexts(got); g != tt.want {
				t.Errorf("Logs(a, %q, after %d, limit %d) = %q, want %q", tt.inv, tt.after, tt.limit, g, tt.want)
			}
		}
	})

	// limit <= 0 is 1000.
	t.Run("default limit", func(t *testing.T) {
		s := open(t, "store")
		ls := logLines("a", "l", "", 1005)
		if err := s.AppendLogs(ctx, ls); err != nil {
			t.Fatal(err)
		}
		for _, limit := range []int{0, -1} {
			got, err := s.Logs(ctx, "a", "", 0, limit)
			if err != nil || len(got) != 1000 || got[0].Line != "l0" || got[999].Line != "l999" {
				t.Errorf("Logs(limit %d): %d lines, %v; want the oldest 1000", limit, len(got), err)
			}
		}
		if got, _ := s.Logs(ctx, "a", "", ls[999].Seq, 0); lineTexts(got) != "l1000 l1001 l1002 l1003 l1004" {
			t.Errorf("the rest: %q", lineTexts(got))
		}
	})

	t.Run("prune keeps the newest of every agent", func(t *testing.T) {
		s := open(t, "store")
		// Interleaved, so that "newest" is per agent, not over all lines.
		for i := range 5 {
			if err := s.AppendLogs(ctx, []domain.LogLine{
				{AgentID: "a", Version: 1, Instance: "i", Stream: "stdout", Line: fmt.Sprint("a", i), At: t0},
				{AgentID: "b", Version: 1, Instance: "i", Stream: "stdout", Line: fmt.Sprint("b", i), At: t0},
			}); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.AppendLogs(ctx, logLines("c", "c", "", 2)); err != nil {
			t.Fatal(err)
		}
		n, err := s.PruneLogs(ctx, 3)
		if err != nil || n != 4 {
			t.Fatalf("PruneLogs(3) = %d, %v; want 4 (2 of a, 2 of b)", n, err)
		}
		for agent, want := range map[string]string{"a": "a2 a3 a4", "b": "b2 b3 b4", "c": "c0 c1"} {
			if got, _ := s.Logs(ctx, agent, "", 0, 0); lineTexts(got) != want {
				t.Errorf("%s after PruneLogs(3): %q, want %q", agent, lineTexts(got), want)
			}
		}
		if n, err := s.PruneLogs(ctx, 3); err != nil || n != 0 {
			t.Errorf("second PruneLogs(3) = %d, %v; want 0", n, err)
		}
		if n, err := s.PruneLogs(ctx, 1); err != nil || n != 5 {
			t.Errorf("PruneLogs(1) = %d, %v; want 5", n, err)
		}
		for agent, want := range map[string]string{"a": "a4", "b": "b4", "c": "c1"} {
			if got, _ := s.Logs(ctx, agent, "", 0, 0); lineTexts(got) != want {
				t.Errorf("%s after PruneLogs(1): %q, want %q", agent, lineTexts(got), want)
			}
		}
	})
}
