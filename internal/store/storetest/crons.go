package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

func testCrons(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, "store")
	next := t0.Add(time.Minute)
	c := domain.Cron{ID: "c1", AgentID: "a", Tenant: "acme", Schedule: "*/5 * * * *", Timezone: "Europe/Paris", EntrypointTag: "report",
		InputArgs: []byte(`[1]`), InputKwargs: []byte(`{"k": "v"}`), Webhook: "https://example.com/h", EndAt: t0.Add(24 * time.Hour),
		NextAt: next, CreatedAt: t0}
	if err := s.CreateCron(ctx, c); err != nil {
		t.Fatal(err)
	}
	for _, other := range []domain.Cron{
		{ID: "c2", AgentID: "a", Schedule: "@hourly", Timezone: "UTC", EntrypointTag: "x", InputArgs: []byte(`[]`), InputKwargs: []byte(`{}`), NextAt: t0.Add(time.Hour), CreatedAt: t0.Add(time.Second)},
		{ID: "c3", AgentID: "b", Schedule: "@daily", Timezone: "UTC", EntrypointTag: "x", InputArgs: []byte(`[]`), InputKwargs: []byte(`{}`), NextAt: t0.Add(30 * time.Second), CreatedAt: t0.Add(2 * time.Second)},
	} {
		if err := s.CreateCron(ctx, other); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Cron(ctx, "c1")
	if err != nil || got.Schedule != c.Schedule || got.Timezone != c.Timezone || string(got.InputKwargs) != `{"k": "v"}` ||
		got.Webhook != c.Webhook || !got.EndAt.Equal(c.EndAt) || !got.NextAt.Equal(next) || got.Paused || got.Tenant != "acme" || !got.CreatedAt.Equal(t0) {
		t.Fatalf("Cron(c1) = %+v, %v", got, err)
	}
	if _, err := s.Cron(ctx, "nope"); !errors.Is(err, domain.ErrNotFound) {
		t.Fatalf("Cron(nope) = %v, want ErrNotFound", err)
	}
	ids := func(cs []domain.Cron) (out []string) {
		for _, c := range cs {
			out = append(out, c.ID)
		}
		return out
	}
	if l, err := s.ListCrons(ctx, []string{"a"}); err != nil || len(l) != 2 || l[0].ID != "c1" || l[1].ID != "c2" {
		t.Fatalf("ListCrons(a) = %v, %v", ids(l), err)
	}
	// Due: the most overdue first, at most limit, not the paused.
	due, err := s.DueCrons(ctx, t0.Add(2*time.Minute), 10)
	if err != nil || len(due) != 2 || due[0].ID != "c3" || due[1].ID != "c1" {
		t.Fatalf("DueCrons = %v, %v; want c3, c1", ids(due), err)
	}
	if due, _ := s.DueCrons(ctx, t0.Add(2*time.Minute), 1); len(due) != 1 || due[0].ID != "c3" {
		t.Fatalf("DueCrons limit 1 = %v", ids(due))
	}
	// Advance: only from the tick it is at.
	if err := s.AdvanceCron(ctx, "c1", next, next.Add(5*time.Minute), "run-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.AdvanceCron(ctx, "c1", next, next.Add(10*time.Minute), "run-2"); !errors.Is(err, domain.ErrNotFound) {
		t.Fatalf("a second advance from the same tick = %v, want ErrNotFound", err)
	}
	if got, _ := s.Cron(ctx, "c1"); !got.NextAt.Equal(next.Add(5*time.Minute)) || got.LastRunID != "run-1" {
		t.Fatalf("after an advance: %+v", got)
	}
	// Paused: not due; resumed at a new tick.
	if err := s.SetCronPaused(ctx, "c3", true, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if due, _ := s.DueCrons(ctx, t0.Add(time.Hour), 10); len(due) != 2 || due[0].ID != "c1" || due[1].ID != "c2" {
		t.Fatalf("due with c3 paused: %v, want c1, c2", ids(due))
	}
	if err := s.SetCronPaused(ctx, "c3", false, t0.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Cron(ctx, "c3"); got.Paused || !got.NextAt.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("resumed: %+v", got)
	}
	// Ended: no next tick, never due.
	if err := s.AdvanceCron(ctx, "c2", t0.Add(time.Hour), time.Time{}, ""); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Cron(ctx, "c2"); !got.NextAt.IsZero() {
		t.Fatalf("ended: %+v", got)
	}
	if due, _ := s.DueCrons(ctx, t0.Add(1000*time.Hour), 10); len(due) != 2 {
		t.Fatalf("due far ahead: %v, want c1 and c3 (c2 ended)", ids(due))
	}
	// Deleting an agent deletes its crons.
	if err := s.DeletePlatformAgent(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Cron(ctx, "c3"); !errors.Is(err, domain.ErrNotFound) {
		t.Fatalf("the cron of a deleted agent: %v, want ErrNotFound", err)
	}
	if err := s.DeleteCron(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteCron(ctx, "c1"); !errors.Is(err, domain.ErrNotFound) {
		t.Fatalf("a second delete = %v, want ErrNotFound", err)
	}
	for _, op := range []error{s.SetCronPaused(ctx, "c1", true, time.Time{}), s.AdvanceCron(ctx, "c1", next, next, "")} {
		if !errors.Is(op, domain.ErrNotFound) {
			t.Errorf("an op on a deleted cron = %v, want ErrNotFound", op)
		}
	}
}
