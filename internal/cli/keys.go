package cli

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/runagent-go/runagent/internal/platformapi"
)

var keyScopes = []string{"run", "deploy", "admin"}

func (a *app) keysCommand() *cobra.Command {
	rf := &remoteFlags{}
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Create, list and revoke the API keys of a runagent server (admin)",
		Long: `Manage the API keys of a platform server (runagent server). These commands
need an admin key; on the server's machine the first one is read from
$RUNAGENT_CACHE_DIR/server/admin-key without any flag.

Scopes: run (call and read agents), deploy (upload, start, delete and read
agents), admin (everything, every tenant, key management).

  runagent keys create --name ci --scope deploy
  runagent keys create --name app --scope run --agent AGENT_ID --rate 5 --burst 10
  runagent keys list
  runagent keys revoke KEY_ID`,
		Args: cobra.NoArgs,
	}
	rf.register(cmd)
	cmd.AddCommand(a.keysCreateCommand(rf), a.keysListCommand(rf), a.keysRevokeCommand(rf))
	return cmd
}

type keyCreateOptions struct {
	name, tenant   string
	scopes, agents []string
	rate           float64
	burst, maxConc int
}

func (a *app) keysCreateCommand(rf *remoteFlags) *cobra.Command {
	o := &keyCreateOptions{}
	cmd := &cobra.Command{
		Use:   "create --name NAME --scope run[,deploy,admin] [--agent ID]...",
		Short: "Create an API key and print it (once)",
		Long: `Create an API key and print it. The key is shown only now: the server keeps
just a hash of it. The key goes to standard output alone, everything else to
standard error, so that

  runagent keys create --name ci --scope deploy > ci.key

stores the key and nothing else. Without --rate, --burst or --max-concurrency
the server's defaults apply to the key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := o.request(cmd)
			if err != nil {
				return err
			}
			rc, err := rf.client()
			if err != nil {
				return err
			}
			ctx, cancel := shortCtx(cmd.Context())
			defer cancel()
			k, err := rc.CreateKey(ctx, req)
			if err != nil {
				return rc.explain(err)
			}
			if a.json {
				a.printJSON(k)
				return nil
			}
			fmt.Fprintf(a.stderr, "Created key %s %q: tenant %s, scopes %s, agents %s, limits %s.\n",
				k.ID, k.Name, k.Tenant, strings.Join(k.Scopes, ","), agentList(k.Agents), limits(*k))
			fmt.Fprintln(a.stdout, k.Key)
			fmt.Fprintln(a.stderr, "Copy the key now: it is not shown again (the server keeps only its hash).")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.name, "name", "", "a name to recognise the key by (required)")
	f.StringVar(&o.tenant, "tenant", "", "the tenant the key belongs to (default: the server's, \"default\")")
	f.StringSliceVar(&o.scopes, "scope", nil, "run, deploy or admin; several separated by commas or repeated (required)")
	f.StringSliceVar(&o.agents, "agent", nil, "restrict the key to this agent id (repeat for several; default: every agent of its tenant)")
	f.Float64Var(&o.rate, "rate", 0, "requests per second the key may make (token bucket rate)")
	f.IntVar(&o.burst, "burst", 0, "requests the key may make at once (token bucket size)")
	f.IntVar(&o.maxConc, "max-concurrency", 0, "calls the key may have in flight")
	return cmd
}

// request checks the flags and builds the request.
func (o *keyCreateOptions) request(cmd *cobra.Command) (platformapi.KeyRequest, error) {
	req := platformapi.KeyRequest{Name: strings.TrimSpace(o.name), Tenant: strings.TrimSpace(o.tenant), Agents: []string{}}
	if req.Name == "" {
		return req, fmt.Errorf("--name is required: a name to recognise the key by, e.g. --name ci")
	}
	if len(o.scopes) == 0 {
		return req, fmt.Errorf("--scope is required: one or more of %s, e.g. --scope run", strings.Join(keyScopes, ", "))
	}
	for _, s := range o.scopes {
		s = strings.ToLower(strings.TrimSpace(s))
		if !contains(keyScopes, s) {
			return req, fmt.Errorf("--scope: %q is not one of %s", s, strings.Join(keyScopes, ", "))
		}
		if !contains(req.Scopes, s) {
			req.Scopes = append(req.Scopes, s)
		}
	}
	for _, id := range o.agents {
		if id = strings.TrimSpace(id); id == "" {
			return req, fmt.Errorf("--agent: empty agent id")
		}
		if !contains(req.Agents, id) {
			req.Agents = append(req.Agents, id)
		}
	}
	f := cmd.Flags()
	if f.Changed("rate") {
		if o.rate <= 0 {
			return req, fmt.Errorf("--rate: must be more than 0 requests per second, got %v", o.rate)
		}
		req.RatePerSecond = &o.rate
	}
	if f.Changed("burst") {
		if o.burst < 1 {
			return req, fmt.Errorf("--burst: must be at least 1, got %d", o.burst)
		}
		req.Burst = &o.burst
	}
	if f.Changed("max-concurrency") {
		if o.maxConc < 1 {
			return req, fmt.Errorf("--max-concurrency: must be at least 1, got %d", o.maxConc)
		}
		req.MaxConcurrency = &o.maxConc
	}
	return req, nil
}

func (a *app) keysListCommand(rf *remoteFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the API keys (revoked ones too)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rc, err := rf.client()
			if err != nil {
				return err
			}
			ctx, cancel := shortCtx(cmd.Context())
			defer cancel()
			keys, err := rc.ListKeys(ctx)
			if err != nil {
				return rc.explain(err)
			}
			if a.json {
				if keys == nil {
					keys = []platformapi.Key{}
				}
				a.printJSON(keys)
				return nil
			}
			if len(keys) == 0 {
				fmt.Fprintln(a.stdout, "No keys. Create one with: runagent keys create --name NAME --scope run")
				return nil
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tTENANT\tSCOPES\tAGENTS\tLIMITS\tCREATED\tREVOKED")
			for _, k := range keys {
				revoked := "-"
				if k.RevokedAt != nil && *k.RevokedAt != "" {
					revoked = formatTime(*k.RevokedAt)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Name, k.Tenant, strings.Join(k.Scopes, ","),
					agentList(k.Agents), limits(k), formatTime(k.CreatedAt), revoked)
			}
			return tw.Flush()
		},
	}
}

func (a *app) keysRevokeCommand(rf *remoteFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke KEY_ID",
		Short: "Revoke an API key: it stops working at once",
		Args:  exactArgs("KEY_ID", "runagent keys list"),
		RunE: func(cmd *cobra.Command, args []string) error {
			rc, err := rf.client()
			if err != nil {
				return err
			}
			ctx, cancel := shortCtx(cmd.Context())
			defer cancel()
			if err := rc.RevokeKey(ctx, args[0]); err != nil {
				return rc.notFound(err, "List the keys with: runagent keys list")
			}
			if a.json {
				a.printJSON(map[string]any{"id": args[0], "revoked": true})
				return nil
			}
			fmt.Fprintf(a.stdout, "Revoked key %s: it no longer works.\n", args[0])
			return nil
		},
	}
}

// agentList shows a key's agent restriction.
func agentList(ids []string) string {
	if len(ids) == 0 {
		return "all"
	}
	short := make([]string, len(ids))
	for i, id := range ids {
		short[i] = shortID(id)
	}
	return strings.Join(short, ",")
}

// shortID shows the first 8 characters of a UUID-like id.
func shortID(id string) string { return short(id, 8) }

// limits shows a key's limits; "default" for the server's (0, or null).
func limits(k platformapi.Key) string {
	var parts []string
	if k.RatePerSecond > 0 {
		parts = append(parts, strconv.FormatFloat(k.RatePerSecond, 'f', -1, 64)+"/s")
	}
	if k.Burst > 0 {
		parts = append(parts, "burst "+strconv.Itoa(k.Burst))
	}
	if k.MaxConcurrency > 0 {
		parts = append(parts, "conc "+strconv.Itoa(k.MaxConcurrency))
	}
	if len(parts) == 0 {
		return "default"
	}
	return strings.Join(parts, " ")
}

// exactArgs is cobra.ExactArgs(1) with a message that names the argument and
// where to find one.
func exactArgs(name, listWith string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) == 0:
			return fmt.Errorf("%s needs %s (list them with: %s)", cmd.CommandPath(), name, listWith)
		case len(args) > 1:
			return fmt.Errorf("%s takes one %s, got %d arguments: %s", cmd.CommandPath(), name, len(args), strings.Join(args, " "))
		}
		return nil
	}
}
