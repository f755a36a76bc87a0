// Package cli is the runagent command line: init, serve, run, run-stream, db.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
)

// EnvCacheDir names the directory for runagent's databases, virtualenvs and
// runner script, as the original CLI does.
const EnvCacheDir = "RUNAGENT_CACHE_DIR"

// CacheDir is $RUNAGENT_CACHE_DIR, or ~/.runagent.
func CacheDir() string {
	if d := os.Getenv(EnvCacheDir); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".runagent"
	}
	return filepath.Join(home, ".runagent")
}

// exitError carries an exit code for errors already reported.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// app holds what every command shares.
type app struct {
	version string
	stdout  io.Writer
	stderr  io.Writer
	json    bool // machine output
}

// Main runs the command line and returns the process exit code.
func Main(version string, args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a := &app{version: version, stdout: os.Stdout, stderr: os.Stderr}
	root := a.rootCommand()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	a.fail(err)
	return 1
}

// fail reports err on stderr (as JSON with --json).
func (a *app) fail(err error) {
	if a.json {
		json.NewEncoder(a.stderr).Encode(map[string]any{"error": err.Error()})
		return
	}
	fmt.Fprintf(a.stderr, "Error: %v\n", err)
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "runagent",
		Short: "Serve Python agents over REST and WebSocket, callable from any language",
		Long: `runagent serves the entrypoints of a Python agent folder (described by
runagent.config.json) over the RunAgent wire protocol, so the official RunAgent
SDKs and this repository's SDKs can call it.

  runagent init my-agent            create an agent from the default template
  runagent serve my-agent           serve it on http://127.0.0.1:8450
  runagent run --id ID --tag minimal --message=hello

With a platform server (runagent server, default http://127.0.0.1:8400; the
commands below take --server and --api-key, or $RUNAGENT_SERVER and
$RUNAGENT_API_KEY, and on the server's machine need neither):

  runagent deploy my-agent          upload the folder as a new version and start it
  runagent agents list              the deployed agents (show ID, delete ID)
  runagent keys create --name ci --scope deploy    API keys (list, revoke ID)
  runagent invocations --agent ID   recent calls (show INVOCATION_ID)
  runagent logs ID --follow         what the agent's instances print`,
		Version:       a.version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().BoolVar(&a.json, "json", false, "print machine-readable JSON instead of text")
	root.AddCommand(a.initCommand(), a.serveCommand(), a.runCommand(false), a.runCommand(true), a.dbCommand(), a.serverCommand(),
		a.deployCommand(), a.agentsCommand(), a.nodesCommand(), a.keysCommand(), a.invocationsCommand(), a.logsCommand(), a.microvmCommand())
	return root
}

// logger builds the server log: text or JSON on stderr.
func (a *app) logger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %q is not one of debug, info, warn, error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(a.stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(a.stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: %q is not text or json", format)
}

// printJSON writes v as one JSON line on stdout.
func (a *app) printJSON(v any) {
	enc := json.NewEncoder(a.stdout)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}
