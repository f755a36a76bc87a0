package agentfolder

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/joho/godotenv"

	"github.com/runagent-go/runagent/internal/domain"
)

// Folder is a loaded, valid agent folder.
type Folder struct {
	// Dir is the folder's absolute path with symlinks resolved.
	Dir string
	// ConfigFile is the base name of the config file read, one of ConfigNames.
	ConfigFile string
	Config     Config
	// Env is the agent's environment: Config.EnvVars with the .env file's
	// variables merged over them. A variable set in both takes the .env value,
	// as the original's loader does (it updates env_vars with .env); a warning
	// says so when the two differ. In .env, ${VAR} refers to an earlier
	// variable of the same file, never to the server's environment.
	Env map[string]string
	// RawConfig is the config file as parsed, before defaults and before the
	// .env merge (for the "config" field of GET /api/v1).
	RawConfig map[string]any
	// Warnings are things worth telling the user that do not stop the agent,
	// each formatted like a Problem.
	Warnings []string
}

// Load reads the agent folder dir: the config file (runagent.config.json,
// else runagent.config.yaml, else runagent.config.yml; when several exist the
// JSON one wins, then .yaml), the .env file if there is one, and checks that
// every Python entrypoint's file is a .py file inside the folder.
//
// A folder without a config file gives an error wrapping ErrNoConfig. A config
// that does not parse gives a *ValidationError with the syntax error alone;
// otherwise a *ValidationError lists every problem found.
func Load(dir string) (*Folder, error) {
	abs, err := resolveDir(dir)
	if err != nil {
		return nil, err
	}
	name, others, err := findConfig(abs)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(abs, name))
	if err != nil {
		return nil, fmt.Errorf("read agent config: %w", err)
	}
	f := &Folder{Dir: abs, ConfigFile: name}
	for _, o := range others {
		f.Warnings = append(f.Warnings, fmt.Sprintf("%s: ignored, because %s is read instead", o, name))
	}
	cfg, raw, warnings, problems := decode(name, data, abs)
	f.Warnings = append(f.Warnings, warnings...)
	if cfg == nil {
		// The file does not parse: nothing else can be checked.
		return nil, &ValidationError{Dir: abs, Problems: problems}
	}
	dotenv, envProblems := readDotenv(abs)
	problems = append(problems, envProblems...)
	if len(problems) > 0 {
		return nil, &ValidationError{Dir: abs, Problems: problems}
	}
	f.Config, f.RawConfig = *cfg, raw
	f.Env = make(map[string]string, len(cfg.EnvVars)+len(dotenv))
	for k, v := range cfg.EnvVars {
		f.Env[k] = v
	}
	for _, k := range sortedKeys(dotenv) {
		if old, ok := cfg.EnvVars[k]; ok && old != dotenv[k] {
			f.Warnings = append(f.Warnings, fmt.Sprintf("%s: %s overrides env_vars%s of %s", EnvFile, k, keyPath(k), name))
		}
		f.Env[k] = dotenv[k]
	}
	return f, nil
}

func resolveDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("agent folder %s: %w", dir, err)
	}
	resolved, err := filepath.EvalSymlinks(abs)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("agent folder %s does not exist", abs)
		}
		return "", fmt.Errorf("agent folder %s: %w", abs, err)
	}
	st, err := os.Stat(resolved)
	if err != nil {
		return "", fmt.Errorf("agent folder %s: %w", abs, err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("agent folder %s is not a directory", abs)
	}
	return resolved, nil
}

// findConfig returns the config file to read and the other accepted names
// that also exist (and are ignored).
func findConfig(dir string) (name string, others []string, err error) {
	for _, n := range ConfigNames {
		st, err := os.Stat(filepath.Join(dir, n))
		if err != nil || st.IsDir() {
			continue
		}
		if name == "" {
			name = n
		} else {
			others = append(others, n)
		}
	}
	if name == "" {
		return "", nil, fmt.Errorf("%w in %s: expected %s (or %s / %s); create an agent folder with `runagent init`",
			ErrNoConfig, dir, ConfigJSON, ConfigYAML, ConfigYML)
	}
	return name, others, nil
}

// readDotenv parses dir/.env when it exists.
func readDotenv(dir string) (map[string]string, []Problem) {
	data, err := os.ReadFile(filepath.Join(dir, EnvFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, []Problem{{File: EnvFile, Msg: err.Error()}}
	}
	env, err := godotenv.UnmarshalBytes(data)
	if err == nil {
		return env, nil
	}
	// godotenv names neither the line nor (usefully) the text: find the line
	// whose statement fails, and never echo the file's values, which may be
	// secrets.
	msg := err.Error()
	if i := strings.Index(msg, " near "); i >= 0 {
		msg = msg[:i]
	}
	if strings.HasPrefix(msg, "unterminated quoted value") {
		msg = "unterminated quoted value"
	}
	return nil, []Problem{{File: EnvFile, Line: dotenvErrorLine(data), Msg: msg}}
}

// dotenvErrorLine returns the first line of the statement that makes data
// fail to parse: one after the longest prefix of whole lines that parses.
func dotenvErrorLine(data []byte) int {
	data = bytes.ReplaceAll(data, []byte("\r\n"), []byte("\n"))
	lines := bytes.SplitAfter(data, []byte("\n"))
	if len(lines) > 5000 {
		return 0
	}
	good := 0
	var prefix []byte
	for i, l := range lines {
		prefix = append(prefix, l...)
		if _, err := godotenv.UnmarshalBytes(prefix); err == nil {
			good = i + 1
		}
	}
	if good >= len(lines) {
		return 0
	}
	return good + 1
}

// checkEntrypointFile returns what is wrong with an entrypoint's file, or "".
func checkEntrypointFile(dir, file string) string {
	native := filepath.FromSlash(file)
	if filepath.IsAbs(native) || strings.HasPrefix(file, "/") {
		return fmt.Sprintf("%q is an absolute path; expected a path relative to the agent folder", file)
	}
	if !filepath.IsLocal(native) {
		return fmt.Sprintf("%q is outside the agent folder", file)
	}
	if !strings.HasSuffix(file, ".py") {
		return fmt.Sprintf("%q is not a Python file; expected a name ending in .py", file)
	}
	full := filepath.Join(dir, native)
	resolved, err := filepath.EvalSymlinks(full)
	if err != nil {
		if st, lerr := os.Lstat(full); lerr == nil && st.Mode()&fs.ModeSymlink != 0 {
			return fmt.Sprintf("%q is a symlink to something that does not exist", file)
		}
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Sprintf("%q does not exist in the agent folder", file)
		}
		return fmt.Sprintf("%q: %v", file, err)
	}
	if rel, err := filepath.Rel(dir, resolved); err != nil || !filepath.IsLocal(rel) {
		return fmt.Sprintf("%q resolves to %s, outside the agent folder", file, resolved)
	}
	st, err := os.Stat(resolved)
	if err != nil {
		return fmt.Sprintf("%q: %v", file, err)
	}
	if st.IsDir() {
		return fmt.Sprintf("%q is a directory; expected a Python file", file)
	}
	if !st.Mode().IsRegular() {
		return fmt.Sprintf("%q is not a regular file", file)
	}
	return ""
}

// moduleHint warns when the first name of an entrypoint's module does not
// appear in its file at all (the original refuses such a folder; the name may
// still come from a star import, so this is only a warning).
func moduleHint(dir, file, module string) string {
	data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(file)))
	if err != nil {
		return ""
	}
	first, _, _ := strings.Cut(module, ".")
	if first == "" || bytes.Contains(data, []byte(first)) {
		return ""
	}
	return fmt.Sprintf("%q does not appear in %s; the entrypoint may not load", first, file)
}

// Agent describes the folder's agent for serving, as version 1 of its own
// id (the platform sets the deployed id, tenant and version).
func (f *Folder) Agent() *domain.Agent {
	cfg := f.Config
	a := &domain.Agent{ID: cfg.AgentID, Version: 1, Name: cfg.AgentName, Framework: cfg.Framework,
		ConfigVersion: cfg.Version, Config: map[string]any{}}
	if cfg.AgentArchitecture != nil {
		a.Entrypoints = cfg.AgentArchitecture.Entrypoints
	}
	for k, v := range f.RawConfig {
		if k != "env_vars" {
			a.Config[k] = v
		}
	}
	// Public only when the file itself says so (absent is not public).
	as, _ := f.RawConfig["auth_settings"].(map[string]any)
	a.Public = as["type"] == "none"
	return a
}
