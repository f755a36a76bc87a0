package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/runagent-go/runagent/internal/agentfolder"
	"github.com/runagent-go/runagent/internal/bundle"
	"github.com/runagent-go/runagent/internal/manager"
	"github.com/runagent-go/runagent/internal/platformapi"
)

// defaultStartTimeout bounds POST /start, which answers only once the new
// version is installed (requirements included) and warm.
const defaultStartTimeout = 10 * time.Minute

type deployOptions struct {
	remoteFlags
	agentID      string
	startTimeout time.Duration
}

func (a *app) deployCommand() *cobra.Command {
	o := &deployOptions{}
	cmd := &cobra.Command{
		Use:   "deploy [PATH]",
		Short: "Upload an agent folder to a runagent server and start the new version",
		Long: `Deploy the agent in PATH (default: the current folder) to a platform server
(runagent server): check the folder as runagent serve would, pack it into a zip
(honouring .gitignore; .git, __pycache__, .venv and the like are left out),
upload it as the agent's next version and start it. The command returns once
the new version takes the traffic.

An agent whose agent_id is still the all-zero placeholder of a template gets
a fresh UUID first, written into its config file (as runagent init does).

  runagent deploy ./my-agent
  runagent deploy ./my-agent --server https://agents.example.com --api-key ra_...`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := "."
			if len(args) == 1 {
				dir = args[0]
			}
			return a.deploy(cmd.Context(), dir, o)
		},
	}
	o.register(cmd)
	cmd.Flags().StringVar(&o.agentID, "agent-id", "", "deploy as this agent id instead of the config's agent_id")
	cmd.Flags().DurationVar(&o.startTimeout, "start-timeout", defaultStartTimeout, "how long to wait for the new version to start")
	return cmd
}

func (a *app) deploy(ctx context.Context, dir string, o *deployOptions) error {
	if o.agentID != "" && !agentfolder.IsUUID(o.agentID) {
		return fmt.Errorf("--agent-id: %q is not a UUID like %s", o.agentID, uuid.NewString())
	}
	if o.startTimeout <= 0 {
		return fmt.Errorf("--start-timeout: must be positive, got %s", o.startTimeout)
	}
	rc, err := o.client()
	if err != nil {
		return err
	}
	folder, err := loadForDeploy(dir)
	if err != nil {
		return err
	}
	if err := checkDeployKey(ctx, rc); err != nil {
		return err
	}
	agentID := o.agentID
	if agentID == "" {
		agentID = folder.Config.AgentID
		if agentID == agentfolder.ZeroAgentID {
			agentID = uuid.NewString()
			if err := agentfolder.WriteAgentID(folder.Dir, agentID); err != nil {
				return fmt.Errorf("give the agent a fresh id: %w", err)
			}
			if folder, err = loadForDeploy(dir); err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "Gave the agent the fresh id %s (written to %s).\n", agentID, folder.ConfigFile)
		}
	}
	for _, w := range folder.Warnings {
		fmt.Fprintf(a.stderr, "warning: %s\n", w)
	}

	// Pack into a temporary file: the upload streams from it.
	tmp, err := os.CreateTemp("", "runagent-bundle-*.zip")
	if err != nil {
		return fmt.Errorf("create a temporary file for the bundle: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	sum, err := a.pack(folder.Dir, tmp)
	if err != nil {
		return err
	}
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	for _, s := range sum.Skipped {
		fmt.Fprintf(a.stderr, "warning: not packed: %s\n", s)
	}

	up, err := a.upload(ctx, rc, agentID, tmp, size, bundleName(folder.Dir))
	if err != nil {
		return err
	}

	dep, err := a.start(ctx, rc, up, o.startTimeout)
	if err != nil {
		return err
	}
	endpoint := rc.BaseURL() + "/api/v1/agents/" + dep.AgentID
	if a.json {
		a.printJSON(map[string]any{"agent_id": dep.AgentID, "version": dep.Version, "endpoint": endpoint})
		return nil
	}
	fmt.Fprintf(a.stdout, "Deployed %q version %d.\n  agent id  %s\n  endpoint  %s\n", folder.Config.AgentName, dep.Version, dep.AgentID, endpoint)
	a.printCallExample(rc.BaseURL(), dep.AgentID, folder.Config)
	return nil
}

// loadForDeploy loads and checks the agent folder, saying what to fix.
func loadForDeploy(dir string) (*agentfolder.Folder, error) {
	folder, err := agentfolder.Load(dir)
	var ve *agentfolder.ValidationError
	if errors.As(err, &ve) {
		lines := make([]string, len(ve.Problems))
		for i, p := range ve.Problems {
			lines[i] = "  " + p.String()
		}
		return nil, fmt.Errorf("the agent in %s cannot be deployed; fix these first:\n%s", ve.Dir, strings.Join(lines, "\n"))
	}
	if err != nil {
		return nil, err
	}
	if folder.Config.AgentArchitecture == nil || len(folder.Config.AgentArchitecture.Entrypoints) == 0 {
		return nil, fmt.Errorf("%s: agent_architecture.entrypoints: the agent has no entrypoints to deploy; add at least one {\"file\", \"module\", \"tag\"}",
			filepath.Join(folder.Dir, folder.ConfigFile))
	}
	// The server checks the deployment section too; failing here saves an upload.
	if _, err := manager.ParseDeployment(folder.RawConfig["deployment"], manager.DefaultDeployment); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(folder.Dir, folder.ConfigFile), err)
	}
	return folder, nil
}

// checkDeployKey fails fast, before packing, when the server is not there or
// the key may not deploy.
func checkDeployKey(ctx context.Context, rc *remote) error {
	vctx, cancel := shortCtx(ctx)
	defer cancel()
	info, err := rc.ValidateToken(vctx)
	if err != nil {
		return rc.explain(err)
	}
	if len(info.Scopes) > 0 && !contains(info.Scopes, "deploy") && !contains(info.Scopes, "admin") {
		return fmt.Errorf("the API key from %s (%q) has the scopes %s; deploying needs deploy or admin (an admin creates one with: runagent keys create --name NAME --scope deploy)",
			rc.keySource, info.Name, strings.Join(info.Scopes, ","))
	}
	return nil
}

// bundleName is the file name sent with the upload: the folder's name.
func bundleName(dir string) string {
	name := strings.Map(func(r rune) rune {
		if r == '"' || r == '\\' || r == '/' || r < ' ' {
			return '_'
		}
		return r
	}, filepath.Base(dir))
	if name == "" || name == "." || name == string(filepath.Separator) {
		name = "agent"
	}
	return name + ".zip"
}

// pack zips the folder into w, with a live count on a terminal.
func (a *app) pack(dir string, w io.Writer) (bundle.Summary, error) {
	fancy := a.fancy(a.stderr)
	var last time.Time
	progress := func(files int, n int64) {
		if fancy && time.Since(last) > 100*time.Millisecond {
			last = time.Now()
			fmt.Fprintf(a.stderr, "\rPacking %d files (%s)…", files, mib(n))
		}
	}
	sum, err := bundle.Create(dir, w, progress)
	if err != nil {
		if fancy {
			fmt.Fprintln(a.stderr)
		}
		return sum, fmt.Errorf("pack %s: %w", dir, err)
	}
	if fancy {
		fmt.Fprint(a.stderr, "\r\033[K")
	}
	fmt.Fprintf(a.stderr, "Packing %d files (%s)\n", sum.Files, mib(sum.Bytes))
	return sum, nil
}

// upload sends the bundle with a progress bar on a terminal, plain lines
// otherwise.
func (a *app) upload(ctx context.Context, rc *remote, agentID string, zip io.Reader, size int64, name string) (*platformapi.Upload, error) {
	began := time.Now()
	var progress func(int64)
	var bar *progressbar.ProgressBar
	if a.fancy(a.stderr) {
		bar = progressbar.NewOptions64(size,
			progressbar.OptionSetWriter(a.stderr),
			progressbar.OptionSetDescription("Uploading"),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowTotalBytes(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(65*time.Millisecond),
			progressbar.OptionClearOnFinish(),
			progressbar.OptionSetRenderBlankState(true),
		)
		progress = func(sent int64) { bar.Set64(sent) }
	} else {
		fmt.Fprintf(a.stderr, "Uploading %s to %s\n", mib(size), rc.BaseURL())
	}
	up, err := rc.Upload(ctx, agentID, zip, size, name, progress)
	if bar != nil {
		bar.Finish()
		fmt.Fprint(a.stderr, "\r\033[K")
	}
	if err != nil {
		return nil, fmt.Errorf("upload: %w", rc.explain(err))
	}
	fmt.Fprintf(a.stderr, "Uploaded version %d of agent %s (%s in %s)\n", up.Version, up.AgentID, mib(size), time.Since(began).Round(100*time.Millisecond))
	return up, nil
}

// start makes the uploaded version take the traffic, with a spinner on a
// terminal.
func (a *app) start(ctx context.Context, rc *remote, up *platformapi.Upload, timeout time.Duration) (*platformapi.Deployment, error) {
	desc := fmt.Sprintf("Starting version %d…", up.Version)
	if !a.fancy(a.stderr) {
		desc += " (installs requirements and warms instances; the first time can take minutes)"
	}
	stop := a.spin(desc)
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	began := time.Now()
	dep, err := rc.Start(sctx, up.AgentID)
	stop()
	if err != nil {
		hint := fmt.Sprintf("Version %d is uploaded; see why it did not start with: runagent logs %s  (and runagent agents show %s)", up.Version, up.AgentID, up.AgentID)
		switch {
		case ctx.Err() != nil:
			return nil, fmt.Errorf("interrupted while version %d was starting; the server may still finish it.\n%s", up.Version, hint)
		case errors.Is(err, context.DeadlineExceeded):
			return nil, fmt.Errorf("version %d did not start within %s (--start-timeout).\n%s", up.Version, timeout, hint)
		}
		return nil, fmt.Errorf("start: %w\n%s", rc.explain(err), hint)
	}
	fmt.Fprintf(a.stderr, "Started version %d in %s\n", dep.Version, time.Since(began).Round(100*time.Millisecond))
	return dep, nil
}

// spin shows desc with a spinner on a terminal (a plain line otherwise);
// the returned func stops it.
func (a *app) spin(desc string) (stop func()) {
	if !a.fancy(a.stderr) {
		fmt.Fprintln(a.stderr, desc)
		return func() {}
	}
	bar := progressbar.NewOptions64(-1,
		progressbar.OptionSetWriter(a.stderr),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionSpinnerType(14),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionSetSpinnerChangeInterval(0), // ticked below, not by the library
		progressbar.OptionClearOnFinish(),
	)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			bar.Add(1)
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		bar.Finish()
		fmt.Fprint(a.stderr, "\r\033[K")
	}
}

// printCallExample shows how to call the deployed agent.
func (a *app) printCallExample(base, agentID string, cfg agentfolder.Config) {
	if cfg.AgentArchitecture == nil || len(cfg.AgentArchitecture.Entrypoints) == 0 {
		return
	}
	ep := cfg.AgentArchitecture.Entrypoints[0]
	cmd := "run"
	if ep.Streaming() {
		cmd = "run-stream"
	}
	fmt.Fprintf(a.stdout, "\nCall it (with a key that has the run scope in $%s):\n", EnvAPIKey)
	fmt.Fprintf(a.stdout, "  runagent %s --base-url %s --id %s --tag %s --KEY=VALUE\n", cmd, base, agentID, ep.Tag)
	if !ep.Streaming() {
		fmt.Fprintf(a.stdout, "  curl -X POST %s/api/v1/agents/%s/run -H \"Authorization: Bearer $%s\" \\\n"+
			"    -H 'Content-Type: application/json' -d '{\"entrypoint_tag\": \"%s\", \"input_kwargs\": {}}'\n",
			base, agentID, EnvAPIKey, ep.Tag)
	}
	fmt.Fprintf(a.stdout, "A key for it alone: runagent keys create --name NAME --scope run --agent %s\n", agentID)
}
