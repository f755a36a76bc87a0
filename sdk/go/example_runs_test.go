package runagent_test

import (
	"context"
	"fmt"
	"log"
	"time"

	runagent "github.com/runagent-go/runagent/sdk/go"
)

func ExampleClient_StartRun() {
	c, err := runagent.New(runagent.Config{
		AgentID:       "841debad-7433-46ae-a0ec-0540d0df7314",
		EntrypointTag: "sync_orders",
		BaseURL:       "https://runagent.example.com", // a runagent server
		APIKey:        "ra_...",
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	// sync_orders(since="2026-12-01"), in the background; the key makes the
	// create safe to repeat (without one the client makes one per call).
	run, err := c.StartRun(ctx, runagent.Kwargs(map[string]any{"since": "2026-12-01"}),
		&runagent.RunOptions{IdempotencyKey: "orders-2026-12-01"})
	if err != nil {
		log.Fatal(err)
	}
	run, err = c.WaitRun(ctx, run.RunID, time.Minute)
	switch {
	case err != nil:
		log.Fatal(err)
	case !run.Ended():
		log.Printf("still %s after a minute; cancelling", run.Status)
		if _, err := c.CancelRun(ctx, run.RunID); err != nil {
			log.Fatal(err)
		}
	case run.Err() != nil:
		log.Fatalf("the run ended %s: %v", run.Status, run.Err())
	default:
		fmt.Println(run.Output)
	}
}

func ExampleClient_RunStreamResumable() {
	c, err := runagent.New(runagent.Config{
		AgentID:       "841debad-7433-46ae-a0ec-0540d0df7314",
		EntrypointTag: "report_stream",
		BaseURL:       "https://runagent.example.com",
		APIKey:        "ra_...",
		// Every run of this client is ana's, on an instance that sees her
		// persistent folders.
		UserID:           "ana@example.com",
		PersistentMemory: true,
	})
	if err != nil {
		log.Fatal(err)
	}
	st, err := c.RunStreamResumable(context.Background(), runagent.Kwargs(map[string]any{"topic": "Q4"}))
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	for st.Next() { // a dropped connection is re-joined from the last chunk
		if err := st.ChunkErr(); err != nil {
			continue
		}
		fmt.Println(st.Value())
	}
	if err := st.Err(); err != nil {
		log.Fatalf("run %s, after event %s: %v", st.RunID(), st.LastEventID(), err)
	}
}
