package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/runagent-go/runagent/internal/platformclient"
)

// The platform server's address and key, for deploy, keys, agents,
// invocations and logs.
const (
	EnvServer        = "RUNAGENT_SERVER"
	EnvAPIKey        = "RUNAGENT_API_KEY"
	DefaultServerURL = "http://127.0.0.1:8400"
)

// requestTimeout bounds the short platform calls (everything but uploads,
// starts and followed logs).
const requestTimeout = 60 * time.Second

// remoteFlags are --server and --api-key, shared by the platform commands.
type remoteFlags struct {
	server, apiKey string
}

// register adds --server and --api-key to cmd and its subcommands. The
// defaults are resolved when the command runs, so --help never prints a key.
func (r *remoteFlags) register(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&r.server, "server", "", "the platform server (default: $"+EnvServer+", else "+DefaultServerURL+")")
	f.StringVar(&r.apiKey, "api-key", "", "API key (default: $"+EnvAPIKey+", else the local server's admin key in "+
		filepath.Join("$"+EnvCacheDir, "server", "admin-key")+")")
}

// adminKeyPath is where `runagent server` writes its first admin key.
func adminKeyPath() string { return filepath.Join(CacheDir(), "server", "admin-key") }

// serverURL resolves --server: the flag, $RUNAGENT_SERVER, the default. A
// bare host:port gets http://.
func (r *remoteFlags) serverURL() (string, error) {
	raw := r.server
	from := "--server"
	if raw == "" {
		raw, from = os.Getenv(EnvServer), "$"+EnvServer
	}
	if raw == "" {
		return DefaultServerURL, nil
	}
	raw = strings.TrimSpace(raw)
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%s: %q is not a server URL like %s", from, r.serverOrEnv(), DefaultServerURL)
	}
	return strings.TrimRight(u.Scheme+"://"+u.Host+u.EscapedPath(), "/"), nil
}

func (r *remoteFlags) serverOrEnv() string {
	if r.server != "" {
		return r.server
	}
	return os.Getenv(EnvServer)
}

// key resolves --api-key: the flag, $RUNAGENT_API_KEY, the local admin key
// file. source says where it came from, for error messages.
func (r *remoteFlags) key() (key, source string, err error) {
	if r.apiKey != "" {
		return strings.TrimSpace(r.apiKey), "--api-key", nil
	}
	if k := strings.TrimSpace(os.Getenv(EnvAPIKey)); k != "" {
		return k, "$" + EnvAPIKey, nil
	}
	path := adminKeyPath()
	b, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(b)) != "" {
		return strings.TrimSpace(string(b)), path, nil
	}
	return "", "", fmt.Errorf("no API key: pass --api-key KEY or set $%s (on the server's machine, `runagent server` writes an admin key to %s)",
		EnvAPIKey, path)
}

// remote is a platform client with what the error messages need.
type remote struct {
	*platformclient.Client
	keySource string
}

// client builds the platform client from the flags.
func (r *remoteFlags) client() (*remote, error) {
	base, err := r.serverURL()
	if err != nil {
		return nil, err
	}
	key, source, err := r.key()
	if err != nil {
		return nil, err
	}
	return &remote{Client: platformclient.New(base, key, nil), keySource: source}, nil
}

// explain adds what to do next to a platform error.
func (rc *remote) explain(err error) error {
	if err == nil {
		return nil
	}
	var ae *platformclient.APIError
	if !errors.As(err, &ae) {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%w: the server at %s did not answer in time", err, rc.BaseURL())
		}
		return err
	}
	msg := err.Error()
	for _, d := range ae.DetailLines() {
		msg += "\n  " + d
	}
	switch ae.Code {
	case "AUTHENTICATION_ERROR":
		msg += fmt.Sprintf("\nThe server at %s refused the API key from %s: pass a valid key with --api-key or $%s.", rc.BaseURL(), rc.keySource, EnvAPIKey)
	case "PERMISSION_ERROR":
		msg += "\nThe key lacks the scope (run, deploy or admin) or may not use this agent; an admin can list keys with `runagent keys list`."
	case "RATE_LIMIT_EXCEEDED", "OVERLOADED":
		if ae.RetryAfter > 0 {
			msg += fmt.Sprintf("\nTry again in %s.", ae.RetryAfter)
		}
	}
	return errors.New(msg)
}

// notFound wraps err with a hint when it is a 404, else explains it.
func (rc *remote) notFound(err error, what string) error {
	var ae *platformclient.APIError
	if errors.As(err, &ae) && ae.Status == 404 {
		return fmt.Errorf("%w\n%s", err, what)
	}
	return rc.explain(err)
}

// shortCtx bounds a short platform call.
func shortCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, requestTimeout)
}

// isTerminal reports whether f is an interactive terminal. A variable so that
// tests can pretend.
var isTerminal = func(f any) bool {
	file, ok := f.(*os.File)
	if !ok {
		return false
	}
	// A character device is not enough: /dev/null is one (cron, CI).
	return term.IsTerminal(int(file.Fd()))
}

// fancy reports whether progress may be drawn on w (bars, spinners): a
// terminal, and not --json.
func (a *app) fancy(w io.Writer) bool { return !a.json && isTerminal(w) }

// formatTime shows a server timestamp (RFC 3339, or ISO 8601 without a zone,
// which the wire records use for UTC) in local time; anything else as is.
func formatTime(s string) string {
	if s == "" {
		return "-"
	}
	if t, ok := parseTime(s); ok {
		return t.Local().Format("2006-01-02 15:04:05")
	}
	return s
}

func parseTime(s string) (time.Time, bool) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// mib formats a byte count in MiB (KiB below one MiB).
func mib(n int64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
