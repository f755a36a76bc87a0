package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	runagent "github.com/runagent-go/runagent/sdk/go"
)

// runArgs is the parsed command line of run and run-stream. Flags other
// than the known ones become keyword arguments: --message=hello.
type runArgs struct {
	id, tag, host, baseURL, apiKey, input string
	port                                  int
	timeout                               time.Duration
	json, help                            bool
	kwargs                                map[string]any
}

var knownRunFlags = map[string]bool{"id": true, "tag": true, "host": true, "port": true, "input": true,
	"base-url": true, "api-key": true, "timeout": true, "json": false, "help": false, "local": false}

func parseRunArgs(args []string) (runArgs, error) {
	r := runArgs{kwargs: map[string]any{}}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "-h" {
			r.help = true
			continue
		}
		if !strings.HasPrefix(a, "--") || len(a) == 2 {
			return r, fmt.Errorf("unexpected argument %q: pass inputs as --KEY=VALUE", a)
		}
		name, value, hasValue := strings.Cut(a[2:], "=")
		takesValue, known := knownRunFlags[name]
		if known && !takesValue {
			if hasValue {
				b, err := strconv.ParseBool(value)
				if err != nil {
					return r, fmt.Errorf("--%s: %q is not true or false", name, value)
				}
				value = strconv.FormatBool(b)
			} else {
				value = "true"
			}
		} else if !hasValue {
			if i+1 >= len(args) || strings.HasPrefix(args[i+1], "--") {
				if known {
					return r, fmt.Errorf("--%s needs a value", name)
				}
				return r, fmt.Errorf("--%s needs a value: --%s=VALUE", name, name)
			}
			i++
			value = args[i]
		}
		switch name {
		case "id":
			r.id = value
		case "tag":
			r.tag = value
		case "host":
			r.host = value
		case "port":
			p, err := strconv.Atoi(value)
			if err != nil || p < 1 || p > 65535 {
				return r, fmt.Errorf("--port: %q is not a port number", value)
			}
			r.port = p
		case "input":
			r.input = value
		case "base-url":
			r.baseURL = value
		case "api-key":
			r.apiKey = value
		case "timeout":
			d, err := time.ParseDuration(value)
			if err != nil {
				return r, fmt.Errorf("--timeout: %q is not a duration like 30s or 5m", value)
			}
			r.timeout = d
		case "json":
			r.json = value == "true"
		case "help":
			r.help = value == "true"
		case "local":
		default:
			r.kwargs[name] = value
		}
	}
	return r, nil
}

// readInput reads --input: a JSON file (or - for stdin) holding either
// {"input_args": [...], "input_kwargs": {...}} or a plain object of kwargs.
func readInput(path string, stdin io.Reader) (runagent.Input, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(stdin)
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return runagent.Input{}, fmt.Errorf("--input: %w", err)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(b, &obj); err != nil {
		return runagent.Input{}, fmt.Errorf("--input %s: not a JSON object: %v", path, err)
	}
	_, hasArgs := obj["input_args"]
	_, hasKwargs := obj["input_kwargs"]
	var in runagent.Input
	if hasArgs || hasKwargs {
		var req struct {
			InputArgs   []any          `json:"input_args"`
			InputKwargs map[string]any `json:"input_kwargs"`
		}
		if err := json.Unmarshal(b, &req); err != nil {
			return in, fmt.Errorf("--input %s: input_args must be a list and input_kwargs an object: %v", path, err)
		}
		return runagent.Input{Args: req.InputArgs, Kwargs: req.InputKwargs}, nil
	}
	if err := json.Unmarshal(b, &in.Kwargs); err != nil {
		return in, fmt.Errorf("--input %s: %v", path, err)
	}
	return in, nil
}

func (a *app) runCommand(stream bool) *cobra.Command {
	use, short := "run", "Call an entrypoint of a served agent and print its result"
	if stream {
		use, short = "run-stream", "Call a streaming entrypoint and print chunks as they arrive"
	}
	long := short + `.

  runagent ` + use + ` --id AGENT_ID --tag TAG [--KEY=VALUE ...] [--input FILE.json]
  runagent ` + use + ` --host 127.0.0.1 --port 8450 --id AGENT_ID --tag TAG ...

Every --KEY=VALUE that is not one of the flags below is passed to the agent
function as a keyword argument (a string). For other types or positional
arguments use --input with a JSON file ({"input_args": [...], "input_kwargs": {...}},
or an object of keyword arguments); "-" reads standard input.

With only --id the agent is found in the local registry written by
` + "`runagent serve`" + `.

Flags:
  --id ID          the agent id (required)
  --tag TAG        the entrypoint tag (required)
  --host, --port   the server (default: from the local registry)
  --base-url URL   a remote server instead, e.g. https://agents.example.com
  --api-key KEY    sent as Authorization: Bearer (default: $RUNAGENT_API_KEY)
  --input FILE     inputs from a JSON file
  --timeout D      give up after D (e.g. 30s)
  --json           print JSON`
	return &cobra.Command{
		Use:                use + " --id ID --tag TAG [--KEY=VALUE ...]",
		Short:              short,
		Long:               long,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := parseRunArgs(args)
			if err != nil {
				return err
			}
			if r.help {
				return cmd.Help()
			}
			a.json = a.json || r.json
			return a.call(cmd.Context(), r, stream)
		},
	}
}

func (a *app) call(ctx context.Context, r runArgs, stream bool) error {
	if r.id == "" || r.tag == "" {
		return errors.New("both --id and --tag are required (see runagent run --help)")
	}
	in := runagent.Input{Kwargs: r.kwargs}
	if r.input != "" {
		file, err := readInput(r.input, os.Stdin)
		if err != nil {
			return err
		}
		for k, v := range r.kwargs { // flags win over the file
			if file.Kwargs == nil {
				file.Kwargs = map[string]any{}
			}
			file.Kwargs[k] = v
		}
		in = file
	}
	cfg := runagent.Config{AgentID: r.id, EntrypointTag: r.tag, APIKey: r.apiKey, Timeout: r.timeout}
	if r.baseURL != "" {
		cfg.BaseURL = r.baseURL
	} else {
		cfg.Local, cfg.Host, cfg.Port = true, r.host, r.port
	}
	client, err := runagent.New(cfg)
	if err != nil {
		return err
	}
	if r.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.timeout)
		defer cancel()
	}
	if stream != runagent.IsStreamTag(r.tag) {
		if stream {
			return fmt.Errorf("%q is not a streaming entrypoint (those end in _stream): use runagent run", r.tag)
		}
		return fmt.Errorf("%q is a streaming entrypoint: use runagent run-stream", r.tag)
	}
	if !stream {
		v, err := client.Run(ctx, in)
		if err != nil {
			return explain(err)
		}
		a.printValue(v, true)
		return nil
	}
	s, err := client.RunStream(ctx, in)
	if err != nil {
		return explain(err)
	}
	defer s.Close()
	wroteText := false
	for s.Next() {
		if err := s.ChunkErr(); err != nil {
			fmt.Fprintf(a.stderr, "warning: %v\n", err)
			continue
		}
		v := s.Value()
		if str, ok := v.(string); ok && !a.json {
			fmt.Fprint(a.stdout, str) // text streams (tokens) read naturally
			wroteText = true
			continue
		}
		if wroteText {
			fmt.Fprintln(a.stdout)
			wroteText = false
		}
		a.printValue(v, false)
	}
	if wroteText {
		fmt.Fprintln(a.stdout)
	}
	if err := s.Err(); err != nil {
		return explain(err)
	}
	return nil
}

// printValue prints a result: strings as text, anything else as JSON.
func (a *app) printValue(v any, indent bool) {
	if str, ok := v.(string); ok && !a.json {
		fmt.Fprintln(a.stdout, str)
		return
	}
	enc := json.NewEncoder(a.stdout)
	enc.SetEscapeHTML(false)
	if indent && !a.json {
		enc.SetIndent("", "  ")
	}
	enc.Encode(v)
}

// explain adds what to do next to an SDK error.
func explain(err error) error {
	var e *runagent.Error
	if !errors.As(err, &e) {
		return err
	}
	switch e.Code {
	case runagent.CodeConnection:
		return fmt.Errorf("%w\nIs the agent served? Start it with: runagent serve PATH", err)
	case runagent.CodeNotFound:
		return fmt.Errorf("%w\nCheck the tag and id against GET /api/v1/agents/ID/architecture", err)
	}
	return err
}
