package cli

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/runagent-go/runagent/internal/agentfolder"
	"github.com/runagent-go/runagent/internal/templates"
)

func (a *app) initCommand() *cobra.Command {
	var template string
	var list bool
	cmd := &cobra.Command{
		Use:   "init [PATH]",
		Short: "Create an agent folder from a template",
		Long: `Create an agent folder in PATH (default: ./my-agent) from one of the
templates built into runagent, with a fresh agent id.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if list {
				return a.listTemplates()
			}
			dir := "my-agent"
			if len(args) == 1 {
				dir = args[0]
			}
			return a.initAgent(dir, template)
		},
	}
	cmd.Flags().StringVarP(&template, "template", "t", "default", "template to start from (see --list)")
	cmd.Flags().BoolVar(&list, "list", false, "list the templates and exit")
	return cmd
}

func (a *app) listTemplates() error {
	if a.json {
		var out []map[string]string
		for _, n := range templates.Names() {
			out = append(out, map[string]string{"name": n, "description": templates.Describe(n)})
		}
		a.printJSON(out)
		return nil
	}
	for _, n := range templates.Names() {
		fmt.Fprintf(a.stdout, "%-16s %s\n", n, templates.Describe(n))
	}
	return nil
}

func (a *app) initAgent(dir, template string) error {
	if !contains(templates.Names(), template) {
		return fmt.Errorf("there is no template %q; choose one of: %s", template, strings.Join(templates.Names(), ", "))
	}
	if err := templates.Write(template, dir); err != nil {
		return err
	}
	id := uuid.NewString()
	if err := agentfolder.WriteAgentID(dir, id); err != nil {
		return err
	}
	folder, err := agentfolder.Load(dir)
	if err != nil {
		return fmt.Errorf("the new agent does not load (a bug in template %q): %w", template, err)
	}
	if a.json {
		a.printJSON(map[string]any{"path": folder.Dir, "agent_id": id, "template": template})
		return nil
	}
	fmt.Fprintf(a.stdout, "Created agent %q in %s from template %q.\n  agent id  %s\nServe it:  runagent serve %s\n",
		folder.Config.AgentName, dir, template, id, filepath.Clean(dir))
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
