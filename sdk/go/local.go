package runagent

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	_ "modernc.org/sqlite" // driver "sqlite" for the local registry
)

// LocalRegistryPath returns the path of the local agent registry that
// `runagent serve` writes: $RUNAGENT_CACHE_DIR/runagent_local.db, by default
// ~/.runagent/runagent_local.db.
func LocalRegistryPath() (string, error) {
	p, e := localRegistryPath()
	return p, errOrNil(e)
}

func localRegistryPath() (string, *Error) {
	dir := os.Getenv("RUNAGENT_CACHE_DIR")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", &Error{Code: CodeNotFound, Message: "cannot locate the local agent registry: " + err.Error() + "; set RUNAGENT_CACHE_DIR", Err: err}
		}
		dir = filepath.Join(home, ".runagent")
	}
	return filepath.Join(dir, "runagent_local.db"), nil
}

// discoverLocal reads host and port of agentID from the local registry,
// table agents (key agent_id), opened read-only.
func discoverLocal(agentID string) (string, int, *Error) {
	path, perr := localRegistryPath()
	if perr != nil {
		return "", 0, perr
	}
	hint := "; start the agent with `runagent serve <agent folder>` or set Config.Host and Config.Port"
	if _, err := os.Stat(path); err != nil {
		return "", 0, &Error{Code: CodeNotFound, Message: "local agent registry " + path + " not found" + hint, Err: err}
	}
	abs, aerr := filepath.Abs(path)
	if aerr != nil {
		abs = path
	}
	dsn := (&url.URL{Scheme: "file", Path: filepath.ToSlash(abs), RawQuery: "mode=ro&_busy_timeout=2000"}).String()
	db, oerr := sql.Open("sqlite", dsn)
	if oerr != nil {
		return "", 0, &Error{Code: CodeInternal, Message: "cannot open local agent registry " + path + ": " + oerr.Error(), Err: oerr}
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var host sql.NullString
	var port any
	qerr := db.QueryRowContext(ctx, "SELECT host, port FROM agents WHERE agent_id = ?", agentID).Scan(&host, &port)
	switch {
	case errors.Is(qerr, sql.ErrNoRows):
		return "", 0, &Error{Code: CodeNotFound, Message: fmt.Sprintf("agent %s is not in the local agent registry %s%s", agentID, path, hint), Err: qerr}
	case qerr != nil:
		return "", 0, &Error{Code: CodeInternal, Message: "cannot read local agent registry " + path + ": " + qerr.Error() + hint, Err: qerr}
	}
	p, ok := portValue(port)
	if !ok || !host.Valid || strings.TrimSpace(host.String) == "" {
		return "", 0, &Error{Code: CodeNotFound, Message: fmt.Sprintf("agent %s has no host/port in the local agent registry %s%s", agentID, path, hint)}
	}
	return strings.TrimSpace(host.String), p, nil
}

func portValue(v any) (int, bool) {
	var n int64
	switch x := v.(type) {
	case int64:
		n = x
	case float64:
		n = int64(x)
	case []byte:
		i, err := strconv.ParseInt(strings.TrimSpace(string(x)), 10, 64)
		if err != nil {
			return 0, false
		}
		n = i
	case string:
		i, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64)
		if err != nil {
			return 0, false
		}
		n = i
	default:
		return 0, false
	}
	if n <= 0 || n > 65535 {
		return 0, false
	}
	return int(n), true
}
