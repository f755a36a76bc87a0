package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/runagent-go/runagent/internal/platformapi"
	"github.com/runagent-go/runagent/internal/platformclient"
)

// maxLogPage is the page size used to read logs (the server's default).
const maxLogPage = 500

type logsOptions struct {
	invocation string
	follow     bool
	limit      int
	after      int64
}

func (a *app) logsCommand() *cobra.Command {
	rf := &remoteFlags{}
	o := &logsOptions{}
	cmd := &cobra.Command{
		Use:   "logs AGENT_ID [--invocation ID] [--follow] [--limit N]",
		Short: "Print what a deployed agent's instances wrote (stdout and stderr)",
		Long: `Print the log lines of an agent deployed on a platform server: the last
--limit lines, or with --after SEQ the lines after that sequence number. With
--follow, keep printing new lines as they arrive until Ctrl-C. Each line reads

  TIME VERSION INSTANCE [inv INVOCATION] STREAM: TEXT

With --json every line is one JSON object {seq, time, version, instance,
invocation_id, stream, line}.`,
		Args: exactArgs("AGENT_ID", "runagent agents list"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.limit < 1 {
				return fmt.Errorf("--limit: must be at least 1, got %d", o.limit)
			}
			if o.after < 0 {
				return fmt.Errorf("--after: must be a sequence number (0 or more), got %d", o.after)
			}
			rc, err := rf.client()
			if err != nil {
				return err
			}
			return a.logs(cmd.Context(), rc, args[0], o, cmd.Flags().Changed("after"))
		},
	}
	rf.register(cmd)
	f := cmd.Flags()
	f.StringVar(&o.invocation, "invocation", "", "only the lines of this invocation")
	f.BoolVarP(&o.follow, "follow", "f", false, "keep printing new lines until Ctrl-C")
	f.IntVarP(&o.limit, "limit", "n", 100, "how many lines to print (before following)")
	f.Int64Var(&o.after, "after", 0, "print the lines after this sequence number instead of the last ones")
	return cmd
}

func (a *app) logs(ctx context.Context, rc *remote, agentID string, o *logsOptions, forward bool) error {
	lines, cursor, err := a.readLogs(ctx, rc, agentID, o, forward)
	if err != nil {
		return rc.notFound(err, "List the agents with: runagent agents list")
	}
	for _, l := range lines {
		a.printLog(l)
	}
	if !o.follow {
		return nil
	}
	err = rc.FollowLogs(ctx, agentID, cursor, func(l platformapi.LogLine) error {
		if o.invocation != "" && string(l.InvocationID) != o.invocation {
			return nil
		}
		a.printLog(l)
		return nil
	})
	switch {
	case ctx.Err() != nil: // Ctrl-C
		return nil
	case err != nil:
		return rc.notFound(err, "List the agents with: runagent agents list")
	}
	return fmt.Errorf("the server at %s closed the log stream", rc.BaseURL())
}

// readLogs returns the lines to print and the sequence number to follow
// from: the last o.limit lines, or (forward) the first o.limit after o.after.
func (a *app) readLogs(ctx context.Context, rc *remote, agentID string, o *logsOptions, forward bool) ([]platformapi.LogLine, int64, error) {
	cursor := o.after
	var kept []platformapi.LogLine
	for {
		page := maxLogPage
		if forward && o.limit-len(kept) < page {
			page = o.limit - len(kept)
		}
		pctx, cancel := shortCtx(ctx)
		p, err := rc.Logs(pctx, agentID, o.invocation, cursor, page)
		cancel()
		if err != nil {
			return nil, 0, err
		}
		kept = append(kept, p.Logs...)
		if !forward && len(kept) > o.limit {
			kept = append(kept[:0], kept[len(kept)-o.limit:]...)
		}
		next := p.NextAfter
		if n := len(p.Logs); n > 0 && p.Logs[n-1].Seq > next {
			next = p.Logs[n-1].Seq
		}
		progressed := next > cursor
		if progressed {
			cursor = next
		}
		if len(p.Logs) == 0 || !progressed || len(p.Logs) < page || (forward && len(kept) >= o.limit) {
			return kept, cursor, nil
		}
	}
}

// printLog prints one log line, as JSON with --json.
func (a *app) printLog(l platformapi.LogLine) {
	if a.json {
		a.printJSON(l)
		return
	}
	fmt.Fprintln(a.stdout, formatLogLine(l))
}

// formatLogLine gives "TIME vN INSTANCE [inv ID…] STREAM: TEXT".
func formatLogLine(l platformapi.LogLine) string {
	var b strings.Builder
	ts := l.Time
	if t, ok := parseTime(l.Time); ok {
		ts = t.UTC().Format("2006-01-02T15:04:05.000Z")
	}
	if ts != "" {
		b.WriteString(ts + " ")
	}
	if l.Version > 0 {
		fmt.Fprintf(&b, "v%d ", l.Version)
	}
	if inst := string(l.Instance); inst != "" {
		if strings.Trim(inst, "0123456789") == "" {
			inst = "inst-" + inst
		}
		b.WriteString(inst + " ")
	}
	if l.InvocationID != "" {
		b.WriteString("[inv " + short(string(l.InvocationID), 8) + "] ")
	}
	stream := l.Stream
	if stream == "" {
		stream = "log"
	}
	b.WriteString(stream + ": " + strings.TrimRight(l.Line, "\r\n"))
	return b.String()
}

type invocationsOptions struct {
	agent, status string
	limit         int
}

func (a *app) invocationsCommand() *cobra.Command {
	rf := &remoteFlags{}
	o := &invocationsOptions{}
	cmd := &cobra.Command{
		Use:   "invocations [--agent ID] [--status S] [--limit N]",
		Short: "List the recent invocations of the agents on a runagent server",
		Long: `List the invocations recorded by a platform server (runagent server), newest
first, over the agents the key can see. For the history of a local
runagent serve use runagent db invocations instead.

  runagent invocations --agent AGENT_ID --status failed
  runagent invocations show INVOCATION_ID`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch o.status {
			case "", "pending", "completed", "failed":
			default:
				return fmt.Errorf("--status: %q is not pending, completed or failed", o.status)
			}
			if o.limit < 1 || o.limit > 10000 {
				return fmt.Errorf("--limit: must be from 1 to 10000, got %d", o.limit)
			}
			rc, err := rf.client()
			if err != nil {
				return err
			}
			ctx, cancel := shortCtx(cmd.Context())
			defer cancel()
			list, err := rc.ListInvocations(ctx, o.agent, o.status, o.limit)
			if err != nil {
				return rc.explain(err)
			}
			if a.json {
				a.printJSON(list)
				return nil
			}
			a.printInvocations(list)
			return nil
		},
	}
	rf.register(cmd)
	f := cmd.Flags()
	f.StringVar(&o.agent, "agent", "", "only this agent's invocations")
	f.StringVar(&o.status, "status", "", "only pending, completed or failed")
	f.IntVar(&o.limit, "limit", 20, "how many to list")
	cmd.AddCommand(a.invocationShowCommand(rf))
	return cmd
}

func (a *app) printInvocations(list *platformclient.InvocationList) {
	if len(list.Invocations) == 0 {
		fmt.Fprintln(a.stdout, "No invocations yet. Call a deployed agent (runagent run --base-url URL --id ID --tag TAG).")
		return
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INVOCATION\tAGENT\tTAG\tSTATUS\tSTARTED\tTIME\tERROR")
	for _, inv := range list.Invocations {
		took := "-"
		if inv.ExecutionTimeMS != nil {
			took = fmt.Sprintf("%.1fms", *inv.ExecutionTimeMS)
		}
		errText := ""
		if inv.ErrorDetail != nil {
			errText = short(oneLine(*inv.ErrorDetail), 60)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", inv.InvocationID, shortID(inv.AgentID), inv.EntrypointTag, inv.Status,
			formatTime(inv.RequestTimestamp), took, errText)
	}
	tw.Flush()
	if list.TotalCount > len(list.Invocations) {
		fmt.Fprintf(a.stdout, "(%d of %d; see more with --limit)\n", len(list.Invocations), list.TotalCount)
	}
}

func (a *app) invocationShowCommand(rf *remoteFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "show INVOCATION_ID",
		Short: "Show one invocation with its inputs and output",
		Args:  exactArgs("INVOCATION_ID", "runagent invocations"),
		RunE: func(cmd *cobra.Command, args []string) error {
			rc, err := rf.client()
			if err != nil {
				return err
			}
			ctx, cancel := shortCtx(cmd.Context())
			defer cancel()
			inv, err := rc.GetInvocation(ctx, args[0])
			if err != nil {
				var ae *platformclient.APIError
				if errors.As(err, &ae) && ae.Status == 404 {
					return fmt.Errorf("no invocation %s on %s; list them with: runagent invocations", args[0], rc.BaseURL())
				}
				return rc.explain(err)
			}
			if a.json {
				a.printJSON(inv)
				return nil
			}
			b, err := json.MarshalIndent(inv, "", "  ")
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, string(b))
			return nil
		},
	}
}
