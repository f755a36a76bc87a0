package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/runagent-go/runagent/internal/platformapi"
)

func (a *app) nodesCommand() *cobra.Command {
	rf := &remoteFlags{}
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List, drain and resume the nodes of a runagent cluster",
		Long: `Inspect and operate the nodes of a cluster (runagent server --role node),
through one of its gateways, with an admin key.

  runagent nodes list           capacity, instances, drivers, last heartbeat
  runagent nodes drain NODE     no new calls or instances there; calls in flight finish
  runagent nodes resume NODE    take calls again

See docs/multinode.md.`,
		Args: cobra.NoArgs,
	}
	rf.register(cmd)
	cmd.AddCommand(a.nodesListCommand(rf), a.nodeActionCommand(rf, "drain",
		"Stop sending calls to NODE: calls in flight finish, its instances stop as they go idle, other nodes take the load"),
		a.nodeActionCommand(rf, "resume", "Let a drained NODE take calls again"))
	return cmd
}

func (a *app) nodesListCommand(rf *remoteFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the live nodes: capacity, instances, drivers, last heartbeat",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rc, err := rf.client()
			if err != nil {
				return err
			}
			ctx, cancel := shortCtx(cmd.Context())
			defer cancel()
			list, err := rc.ListNodes(ctx)
			if err != nil {
				return rc.explain(err)
			}
			nodes := list.Nodes
			if a.json {
				if nodes == nil {
					nodes = []platformapi.Node{}
				}
				a.printJSON(nodes)
				return nil
			}
			if len(nodes) == 0 {
				fmt.Fprintln(a.stdout, "No node is up. Start one with: runagent server --role node --nats URL --db postgres://...")
				return nil
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tSTATE\tCPUS\tMEMORY FREE\tINSTANCES\tIN FLIGHT\tAGENTS\tDRIVERS\tHEARTBEAT")
			for _, n := range nodes {
				state := "ready"
				if n.Draining {
					state = "draining"
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s / %s\t%d\t%d\t%d\t%s\t%.1fs ago\n", n.ID, state, n.CPUs,
					gib(n.MemoryAvailableBytes), gib(n.MemoryBytes), n.Instances, n.InFlight, len(n.Agents),
					strings.Join(n.Drivers, ","), n.HeartbeatAgeSeconds)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if list.Scheduler == "" {
				fmt.Fprintln(a.stdout, "Scheduler: none right now (the gateways elect one within seconds)")
			} else {
				fmt.Fprintln(a.stdout, "Scheduler: gateway "+list.Scheduler)
			}
			return nil
		},
	}
}

func gib(b int64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }

func (a *app) nodeActionCommand(rf *remoteFlags, action, short string) *cobra.Command {
	return &cobra.Command{
		Use:   action + " NODE",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rc, err := rf.client()
			if err != nil {
				return err
			}
			ctx, cancel := shortCtx(cmd.Context())
			defer cancel()
			if err := rc.NodeAction(ctx, args[0], action); err != nil {
				return rc.explain(err)
			}
			if a.json {
				a.printJSON(platformapi.NodeAction{ID: args[0], Action: action})
				return nil
			}
			if action == "drain" {
				fmt.Fprintf(a.stdout, "Node %s is draining: it takes no new calls; the ones in flight finish there.\n", args[0])
			} else {
				fmt.Fprintf(a.stdout, "Node %s takes calls again.\n", args[0])
			}
			return nil
		},
	}
}
