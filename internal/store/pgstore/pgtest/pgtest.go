// Package pgtest gives tests a real PostgreSQL server: the one named by
// RUNAGENT_TEST_POSTGRES (a connection URL) if set, otherwise a private one
// it starts from the installed binaries (Debian's postgresql package:
// initdb and postgres under /usr/lib/postgresql/N/bin), in a temporary
// directory, listening on a Unix socket only, with fsync off. As root it
// runs the server as the postgres user (PostgreSQL refuses to run as
// root). When neither is available the test fails and says how to get one:
// a store test never skips silently.
//
// A test binary that uses URL or Schema calls Main (or Stop) from its TestMain, so that the
// private server stops when the tests end.
package pgtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Env names a server to use instead of starting one.
const Env = "RUNAGENT_TEST_POSTGRES"

var (
	once    sync.Once
	baseURL string
	srv     *server
	err0    error
)

// Main runs the tests of m and stops the private server, if one started.
func Main(m interface{ Run() int }) {
	code := m.Run()
	Stop()
	os.Exit(code)
}

// Stop stops the private server, if one started (for a TestMain that does
// more than Main).
func Stop() {
	if srv != nil {
		srv.stop()
		srv = nil
	}
}

// URL returns the URL of the server (starting it at the first call).
func URL(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		if u := os.Getenv(Env); u != "" {
			baseURL = u
			return
		}
		srv, err0 = startServer()
		if err0 == nil {
			baseURL = srv.url
		}
	})
	if err0 != nil {
		t.Fatalf("PostgreSQL for the tests: %v\n(install it: apt-get install postgresql, or run `make deps`; or point %s at a server)", err0, Env)
	}
	return baseURL
}

// Schema returns a URL of the server whose search_path is a new, empty
// schema named after name (the same name gives the same schema within one
// test binary run; a new run drops and recreates it).
func Schema(t testing.TB, name string) string {
	t.Helper()
	base := URL(t)
	sum := sha256.Sum256([]byte(name))
	schema := "t_" + hex.EncodeToString(sum[:12])
	mu.Lock()
	defer mu.Unlock()
	if !made[schema] {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Fatalf("connect to the test PostgreSQL: %v", err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, `DROP SCHEMA IF EXISTS `+schema+` CASCADE; CREATE SCHEMA `+schema); err != nil {
			t.Fatalf("create schema %s: %v", schema, err)
		}
		made[schema] = true
	}
	return withParam(base, "search_path", schema)
}

var (
	mu   sync.Mutex
	made = map[string]bool{}
)

// withParam adds a query parameter to a postgres:// URL.
func withParam(base, key, value string) string {
	u, err := url.Parse(base)
	if err != nil || u.Scheme == "" {
		return base + " " + key + "=" + value // a key=value connection string
	}
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = q.Encode()
	return u.String()
}

type server struct {
	dir, bin, data string
	cred           *syscall.Credential
	cmd            *exec.Cmd
	logs           *bytes.Buffer
	url            string
}

// startServer initialises a cluster in a temporary directory and starts
// postgres on a Unix socket in it.
func startServer() (*server, error) {
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "runagent-pgtest-")
	if err != nil {
		return nil, err
	}
	s := &server{dir: dir, bin: bin, data: filepath.Join(dir, "data")}
	fail := func(err error) (*server, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fail(errors.New("running as root, and there is no postgres user to run the server as (Debian's postgresql package creates it)"))
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return fail(err)
		}
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", s.data, "-U", "runagent", "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("initdb: %v\n%s", err, out))
	}
	s.url = "postgres://runagent@/postgres?host=" + url.QueryEscape(dir) + "&sslmode=disable"
	if err := s.run(); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// run starts postgres on the cluster and waits until it takes connections.
func (s *server) run() error {
	s.logs = &bytes.Buffer{}
	s.cmd = exec.Command(filepath.Join(s.bin, "postgres"), "-D", s.data, "-k", s.dir, "-c", "listen_addresses=",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200")
	s.cmd.SysProcAttr = serverAttr(s.cred)
	s.cmd.Dir = s.dir
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, s.url)
		if err == nil {
			conn.Close(ctx)
			cancel()
			return nil
		}
		cancel()
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres did not accept connections within 60 s: %v\n%s", err, s.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// halt stops postgres (a fast shutdown: sessions are cut) and keeps the
// cluster.
func (s *server) halt() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	s.cmd = nil
}

func (s *server) stop() {
	s.halt()
	os.RemoveAll(s.dir)
}

// Restart stops the private server (cutting every session), keeps it down
// for down, and starts it again on the same data. A test that needs it
// fails when the server is not the private one (RUNAGENT_TEST_POSTGRES).
func Restart(t testing.TB, down time.Duration) {
	t.Helper()
	URL(t)
	if srv == nil {
		t.Fatalf("Restart needs the tests' private PostgreSQL; unset %s", Env)
	}
	srv.halt()
	time.Sleep(down)
	if err := srv.run(); err != nil {
		t.Fatal(err)
	}
}

// findBin finds the directory of initdb and postgres: PATH first, then
// Debian's versioned directories, newest first.
func findBin() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r
		}
		return filepath.Dir(p), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("no PostgreSQL server binaries (initdb, postgres) in PATH or /usr/lib/postgresql/*/bin")
}

func version(binDir string) int {
	n, _ := strconv.Atoi(strings.Split(filepath.Base(filepath.Dir(binDir)), ".")[0])
	return n
}
