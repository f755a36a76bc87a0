package runagent_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	runagent "github.com/runagent-go/runagent/sdk/go"
)

func ExampleNew() {
	// A local agent: host and port come from the registry `runagent serve` writes.
	local, err := runagent.New(runagent.Config{
		AgentID:       "841debad-7433-46ae-a0ec-0540d0df7314",
		EntrypointTag: "minimal",
		Local:         true,
	})
	if err != nil {
		log.Fatal(err)
	}
	_ = local

	// A remote agent: the key may also come from RUNAGENT_API_KEY.
	remote, err := runagent.New(runagent.Config{
		AgentID:       "841debad-7433-46ae-a0ec-0540d0df7314",
		EntrypointTag: "minimal",
		BaseURL:       "https://agents.example.com",
		APIKey:        "ra_...",
		Retry:         runagent.RetryPolicy{MaxAttempts: 6, MaxElapsed: time.Minute},
	})
	if err != nil {
		log.Fatal(err)
	}
	_ = remote
}

func ExampleClient_Run() {
	c, err := runagent.New(runagent.Config{AgentID: "841debad-7433-46ae-a0ec-0540d0df7314", EntrypointTag: "minimal", Local: true})
	if err != nil {
		log.Fatal(err)
	}
	// mock_response(message="Hello", role="user")
	out, err := c.Run(context.Background(), runagent.Kwargs(map[string]any{"message": "Hello", "role": "user"}))
	switch {
	case runagent.IsCode(err, runagent.CodeInternal):
		log.Fatalf("the agent raised: %v", err)
	case err != nil:
		log.Fatal(err)
	}
	fmt.Println(out)
}

func ExampleClient_RunInto() {
	c, err := runagent.New(runagent.Config{AgentID: "841debad-7433-46ae-a0ec-0540d0df7314", EntrypointTag: "summarize", Local: true})
	if err != nil {
		log.Fatal(err)
	}
	var summary struct {
		Title  string   `json:"title"`
		Points []string `json:"points"`
	}
	// summarize("some text", max_points=3)
	in := runagent.Args("some text").With("max_points", 3)
	if err := c.RunInto(context.Background(), in, &summary); err != nil {
		log.Fatal(err)
	}
	fmt.Println(summary.Title, summary.Points)
}

func ExampleClient_RunStream() {
	c, err := runagent.New(runagent.Config{AgentID: "841debad-7433-46ae-a0ec-0540d0df7314", EntrypointTag: "minimal_stream", Local: true})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := c.RunStream(ctx, runagent.Kwargs(map[string]any{"message": "Hello"}))
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	for st.Next() {
		if err := st.ChunkErr(); err != nil {
			log.Printf("skipped a chunk: %v", err) // the stream goes on
			continue
		}
		fmt.Print(st.Value())
	}
	if err := st.Err(); err != nil {
		log.Fatal(err)
	}
}

func ExampleStream_Chunks() {
	c, err := runagent.New(runagent.Config{AgentID: "841debad-7433-46ae-a0ec-0540d0df7314", EntrypointTag: "minimal_stream", Local: true})
	if err != nil {
		log.Fatal(err)
	}
	st, err := c.RunStream(context.Background(), runagent.Args("Hello"))
	if err != nil {
		log.Fatal(err)
	}
	for chunk, err := range st.Chunks() { // closes the stream at the end
		if runagent.IsChunkError(err) {
			continue
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Print(chunk)
	}
}

func ExampleError() {
	c, err := runagent.New(runagent.Config{AgentID: "841debad-7433-46ae-a0ec-0540d0df7314", EntrypointTag: "minimal", Local: true})
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.Run(context.Background(), runagent.Input{})
	var e *runagent.Error
	if errors.As(err, &e) {
		switch e.Code {
		case runagent.CodeRateLimit, runagent.CodeOverloaded:
			log.Printf("busy, retries exhausted; server asks to wait %v", e.RetryAfter)
		case runagent.CodeNotFound:
			log.Printf("no such entrypoint: %s", e.Message)
		default:
			log.Printf("%s (HTTP %d): %s", e.Code, e.Status, e.Message)
		}
	}
}

func ExampleDecodeStructured() {
	v, err := runagent.DecodeStructured(`{"type": "object", "payload": "{\"n\": 1, \"x\": 2.5, \"tags\": [\"a\"]}"}`)
	if err != nil {
		log.Fatal(err)
	}
	m := v.(map[string]any)
	fmt.Printf("%T %T %v\n", m["n"], m["x"], m["tags"])
	// Output: int64 float64 [a]
}
