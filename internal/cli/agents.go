package cli

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/runagent-go/runagent/internal/platformapi"
)

func (a *app) agentsCommand() *cobra.Command {
	rf := &remoteFlags{}
	cmd := &cobra.Command{
		Use:   "agents",
		Short: "List, show and delete the agents deployed on a runagent server",
		Long: `Inspect the agents deployed on a platform server (runagent server).

  runagent agents list
  runagent agents show AGENT_ID
  runagent agents delete AGENT_ID [--yes]`,
		Args: cobra.NoArgs,
	}
	rf.register(cmd)
	cmd.AddCommand(a.agentsListCommand(rf), a.agentsShowCommand(rf), a.agentsDeleteCommand(rf))
	return cmd
}

func (a *app) agentsListCommand(rf *remoteFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the agents the key can see",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rc, err := rf.client()
			if err != nil {
				return err
			}
			ctx, cancel := shortCtx(cmd.Context())
			defer cancel()
			agents, err := rc.ListAgents(ctx)
			if err != nil {
				return rc.explain(err)
			}
			if a.json {
				if agents == nil {
					agents = []platformapi.Agent{}
				}
				a.printJSON(agents)
				return nil
			}
			if len(agents) == 0 {
				fmt.Fprintln(a.stdout, "No agents deployed yet. Deploy one with: runagent deploy PATH")
				return nil
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "AGENT\tNAME\tFRAMEWORK\tSTATUS\tVERSION\tUPDATED")
			for _, ag := range agents {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", ag.AgentID, ag.Name, ag.Framework, ag.Status,
					versionText(ag.ActiveVersion), formatTime(ag.UpdatedAt))
			}
			return tw.Flush()
		},
	}
}

func versionText(v int) string {
	if v <= 0 {
		return "-"
	}
	return fmt.Sprintf("v%d", v)
}

func (a *app) agentsShowCommand(rf *remoteFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "show AGENT_ID",
		Short: "Show an agent: its entrypoints, versions, limits and instances",
		Args:  exactArgs("AGENT_ID", "runagent agents list"),
		RunE: func(cmd *cobra.Command, args []string) error {
			rc, err := rf.client()
			if err != nil {
				return err
			}
			ctx, cancel := shortCtx(cmd.Context())
			defer cancel()
			ag, err := rc.GetAgent(ctx, args[0])
			if err != nil {
				return rc.notFound(err, "List the agents with: runagent agents list")
			}
			if a.json {
				a.printJSON(ag)
				return nil
			}
			a.printAgent(ag, rc.BaseURL())
			return nil
		},
	}
}

func (a *app) printAgent(ag *platformapi.AgentDetail, base string) {
	w := a.stdout
	fmt.Fprintf(w, "agent      %s\nname       %s\nframework  %s\nstatus     %s\nversion    %s\ncreated    %s\nupdated    %s\nendpoint   %s\n",
		ag.AgentID, ag.Name, ag.Framework, ag.Status, versionText(ag.ActiveVersion), formatTime(ag.CreatedAt), formatTime(ag.UpdatedAt),
		base+"/api/v1/agents/"+ag.AgentID)
	if len(ag.Entrypoints) > 0 {
		fmt.Fprintln(w, "\nENTRYPOINTS")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, e := range ag.Entrypoints {
			ep := e.Fields()
			where := ep.File
			if ep.Module != "" {
				where += ":" + ep.Module
			}
			fmt.Fprintf(tw, "  %s\t%s\n", ep.Tag, where)
		}
		tw.Flush()
	}
	if len(ag.Versions) > 0 {
		fmt.Fprintln(w, "\nVERSIONS")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, v := range ag.Versions {
			fmt.Fprintf(tw, "  v%d\t%s\t%s\t%s\n", v.Version, v.Status, formatTime(v.UploadedAt), short(oneLine(string(v.Error)), 80))
		}
		tw.Flush()
	}
	for _, sec := range []struct {
		title string
		m     map[string]any
	}{{"LIMITS", jsonObject(ag.Limits)}, {"POOL", jsonObject(ag.Pool)}} {
		if len(sec.m) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s\n", sec.title)
		keys := make([]string, 0, len(sec.m))
		for k := range sec.m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, k := range keys {
			fmt.Fprintf(tw, "  %s\t%s\n", strings.ReplaceAll(k, "_", " "), plainValue(sec.m[k]))
		}
		tw.Flush()
	}
}

// jsonObject is v as its JSON object's keys and values (nil for null), for
// printing a section key by key.
func jsonObject(v any) map[string]any {
	var m map[string]any
	if b, err := json.Marshal(v); err == nil {
		json.Unmarshal(b, &m)
	}
	return m
}

// plainValue shows a JSON value: strings bare, the rest as compact JSON.
func plainValue(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	if v == nil {
		return "-"
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func (a *app) agentsDeleteCommand(rf *remoteFlags) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "delete AGENT_ID [--yes]",
		Short: "Delete an agent: its instances stop and all its versions go",
		Long: `Delete an agent from the server: its instances stop and the files of all its
versions are removed. Asks for confirmation on a terminal; elsewhere (scripts)
pass --yes.`,
		Args: exactArgs("AGENT_ID", "runagent agents list"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			rc, err := rf.client()
			if err != nil {
				return err
			}
			ctx, cancel := shortCtx(cmd.Context())
			defer cancel()
			if !yes {
				in := cmd.InOrStdin()
				if !isTerminal(in) {
					return fmt.Errorf("refusing to delete agent %s without confirmation: standard input is not a terminal; pass --yes", id)
				}
				ag, err := rc.GetAgent(ctx, id)
				if err != nil {
					return rc.notFound(err, "List the agents with: runagent agents list")
				}
				ok, err := confirm(in, a.stderr, fmt.Sprintf("Delete agent %q (%s) and its %d version(s) from %s? Its instances stop. [y/N] ",
					ag.Name, id, len(ag.Versions), rc.BaseURL()))
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("not deleted")
				}
			}
			if err := rc.DeleteAgent(ctx, id); err != nil {
				return rc.notFound(err, "List the agents with: runagent agents list")
			}
			if a.json {
				a.printJSON(map[string]any{"agent_id": id, "deleted": true})
				return nil
			}
			fmt.Fprintf(a.stdout, "Deleted agent %s.\n", id)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "delete without asking")
	return cmd
}

// confirm asks question on w and reads a yes or no from r.
func confirm(r io.Reader, w io.Writer, question string) (bool, error) {
	fmt.Fprint(w, question)
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && line == "" {
		fmt.Fprintln(w)
		if err == io.EOF {
			return false, nil
		}
		return false, err
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true, nil
	}
	return false, nil
}
