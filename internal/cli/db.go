package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/store"
	"github.com/runagent-go/runagent/internal/wire"
)

func (a *app) dbCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "db",
		Short: "Inspect the local invocation history",
	}
	var agentID, status string
	var limit int
	list := &cobra.Command{
		Use:   "invocations",
		Short: "List recent invocations, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withDB(cmd.Context(), func(ctx context.Context, db *store.DB) error {
				invs, err := db.List(ctx, agentID, domain.Status(status), limit)
				if err != nil {
					return err
				}
				if a.json {
					a.printJSON(wire.InvocationRecords(invs))
					return nil
				}
				if len(invs) == 0 {
					fmt.Fprintln(a.stdout, "No invocations yet. Serve an agent (runagent serve) and call it (runagent run).")
					return nil
				}
				tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "INVOCATION\tAGENT\tTAG\tSTATUS\tSTARTED\tTIME\tERROR")
				for _, inv := range invs {
					took := "-"
					if inv.Status != domain.StatusPending {
						took = fmt.Sprintf("%.1fms", inv.ExecutionMS)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", inv.ID, short(inv.AgentID, 8), inv.EntrypointTag, inv.Status,
						inv.RequestTime.Local().Format("2006-01-02 15:04:05"), took, short(oneLine(inv.ErrorDetail), 60))
				}
				return tw.Flush()
			})
		},
	}
	list.Flags().StringVar(&agentID, "agent-id", "", "only this agent's invocations")
	list.Flags().StringVar(&status, "status", "", "only pending, completed or failed")
	list.Flags().IntVar(&limit, "limit", 20, "how many to list")

	show := &cobra.Command{
		Use:   "invocation ID",
		Short: "Show one invocation with its inputs and output",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withDB(cmd.Context(), func(ctx context.Context, db *store.DB) error {
				inv, err := db.Get(ctx, args[0])
				if errors.Is(err, domain.ErrNotFound) {
					return fmt.Errorf("no invocation %s; list them with: runagent db invocations", args[0])
				}
				if err != nil {
					return err
				}
				b, err := json.MarshalIndent(wire.InvocationRecord(inv), "", "  ")
				if err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, string(b))
				return nil
			})
		},
	}

	status_ := &cobra.Command{
		Use:   "status",
		Short: "Show where the history is kept and what it holds",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withDB(cmd.Context(), func(ctx context.Context, db *store.DB) error {
				st, err := db.Stats(ctx, "")
				if err != nil {
					return err
				}
				path := invocationsDBPath()
				var size int64
				if fi, err := os.Stat(path); err == nil {
					size = fi.Size()
				}
				if a.json {
					a.printJSON(map[string]any{"database": path, "size_bytes": size, "registry": store.RegistryPath(), "stats": wire.StatsRecord(st)})
					return nil
				}
				b, _ := json.Marshal(wire.StatsRecord(st))
				var m map[string]any
				json.Unmarshal(b, &m)
				fmt.Fprintf(a.stdout, "history   %s (%d KiB)\nregistry  %s\n", path, size/1024, store.RegistryPath())
				for _, k := range []string{"total_invocations", "completed_invocations", "failed_invocations", "pending_invocations", "success_rate", "avg_execution_time_ms"} {
					fmt.Fprintf(a.stdout, "%-22s %v\n", strings.ReplaceAll(k, "_", " "), m[k])
				}
				return nil
			})
		},
	}
	cmd.AddCommand(list, show, status_)
	return cmd
}

func invocationsDBPath() string { return filepath.Join(CacheDir(), "runagent_invocations.db") }

func (a *app) withDB(ctx context.Context, fn func(context.Context, *store.DB) error) error {
	path := invocationsDBPath()
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("no invocation history at %s yet: serve an agent with `runagent serve` first (or set $%s)", path, EnvCacheDir)
	}
	db, err := store.Open(path)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return fn(ctx, db)
}

func short(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
