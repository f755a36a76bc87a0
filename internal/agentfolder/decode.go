package agentfolder

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
	"go.yaml.in/yaml/v3"

	"github.com/runagent-go/runagent/internal/domain"
)

// Decode parses and validates the bytes of a config file without looking at
// the file system. name is the file's base name: it picks the format (".json"
// or YAML) and prefixes every problem. It returns the decoded config, the
// config as parsed (maps, slices and scalars, ready to marshal as JSON) and
// warnings; err is a *ValidationError listing every problem.
func Decode(name string, data []byte) (cfg *Config, raw map[string]any, warnings []string, err error) {
	cfg, raw, warnings, problems := decode(name, data, "")
	if len(problems) > 0 {
		return nil, raw, warnings, &ValidationError{Problems: problems}
	}
	return cfg, raw, warnings, nil
}

const emptyMsg = "the file is empty; expected an object with agent_name, framework, agent_id, ..."

// decode is Decode that also returns the partly decoded config when there are
// problems; cfg and raw are nil when the file does not parse. With dir set it
// also checks the entrypoints' files in that folder.
func decode(name string, data []byte, dir string) (cfg *Config, raw map[string]any, warnings []string, problems []Problem) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil, nil, []Problem{{File: name, Msg: emptyMsg}}
	}
	var v any
	var p Problem
	var ok bool
	if strings.HasSuffix(name, ".json") {
		p, ok = decodeJSON(name, data, &v)
	} else {
		p, ok = decodeYAML(name, data, &v)
	}
	if !ok {
		return nil, nil, nil, []Problem{p}
	}
	if v == nil && !strings.HasSuffix(name, ".json") { // only comments
		return nil, nil, nil, []Problem{{File: name, Msg: emptyMsg}}
	}
	v = normalize(v)
	m, ok := v.(map[string]any)
	if !ok {
		return nil, nil, nil, []Problem{{File: name, Msg: "expected an object at the top level, got " + typeName(v)}}
	}
	c := checker{file: name, dir: dir}
	cfg = c.config(m)
	orderExtractors(cfg, name, data)
	return cfg, m, c.warnings, c.problems
}

func decodeJSON(name string, data []byte, v *any) (Problem, bool) {
	err := json.Unmarshal(data, v)
	if err == nil {
		return Problem{}, true
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line, col := lineCol(data, int(se.Offset))
		return Problem{File: name, Line: line, Column: col, Msg: se.Error()}, false
	}
	return Problem{File: name, Msg: err.Error()}, false
}

// lineCol converts the offset of json.SyntaxError (the number of bytes read
// when the error was seen, so the bad byte is the last of them) to a 1-based
// line and column in characters.
func lineCol(data []byte, off int) (line, col int) {
	off = min(max(off, 0), len(data))
	before := data[:off]
	line = 1 + bytes.Count(before, []byte("\n"))
	lineStart := bytes.LastIndexByte(before, '\n') + 1
	col = utf8.RuneCount(before[lineStart:])
	if col == 0 {
		col = 1
	}
	return line, col
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func decodeYAML(name string, data []byte, v *any) (Problem, bool) {
	var doc yaml.Node
	err := yaml.Unmarshal(data, &doc)
	if err != nil {
		msg := err.Error()
		if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
			line, _ := strconv.Atoi(m[1])
			return Problem{File: name, Line: line, Msg: m[2]}, false
		}
		return Problem{File: name, Msg: strings.TrimPrefix(msg, "yaml: ")}, false
	}
	y := yamlConverter{file: name}
	*v = y.value(&doc, 0)
	if y.problem != nil {
		return *y.problem, false
	}
	return Problem{}, true
}

// yamlConverter turns a yaml.Node tree into the values encoding/json would
// produce, keeping timestamps as the strings written (yaml.v3 would turn
// an unquoted created_at into a time.Time) and refusing duplicate keys.
type yamlConverter struct {
	file    string
	problem *Problem
}

func (y *yamlConverter) fail(n *yaml.Node, format string, args ...any) any {
	if y.problem == nil {
		y.problem = &Problem{File: y.file, Line: n.Line, Column: n.Column, Msg: fmt.Sprintf(format, args...)}
	}
	return nil
}

func (y *yamlConverter) value(n *yaml.Node, depth int) any {
	if depth > 100 {
		return y.fail(n, "nested too deeply")
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil
		}
		return y.value(n.Content[0], depth+1)
	case yaml.AliasNode:
		return y.value(n.Alias, depth+1)
	case yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		for _, c := range n.Content {
			out = append(out, y.value(c, depth+1))
		}
		return out
	case yaml.MappingNode:
		out := map[string]any{}
		lines := map[string]int{}
		var merges []map[string]any
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if k.ShortTag() == "!!merge" {
				switch m := y.value(val, depth+1).(type) {
				case map[string]any:
					merges = append(merges, m)
				case []any:
					for _, e := range m {
						if mm, ok := e.(map[string]any); ok {
							merges = append(merges, mm)
						}
					}
				}
				continue
			}
			key := fmt.Sprint(y.value(k, depth+1))
			if first, dup := lines[key]; dup {
				return y.fail(k, "key %q is defined twice (first on line %d)", key, first)
			}
			lines[key] = k.Line
			out[key] = y.value(val, depth+1)
		}
		for _, m := range merges {
			for k, v := range m {
				if _, set := out[k]; !set {
					out[k] = v
				}
			}
		}
		return out
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str", "!!timestamp", "!!binary":
			return n.Value
		case "!!null":
			return nil
		case "!!bool":
			var b bool
			if err := n.Decode(&b); err != nil {
				return y.fail(n, "%v", err)
			}
			return b
		case "!!int", "!!float":
			var f float64
			if err := n.Decode(&f); err != nil {
				return y.fail(n, "%v", err)
			}
			return f
		}
		return n.Value
	}
	return nil
}

// normalize makes values JSON can encode: non-finite floats (YAML .nan,
// .inf) become strings.
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = normalize(e)
		}
	case []any:
		for i, e := range x {
			x[i] = normalize(e)
		}
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return strconv.FormatFloat(x, 'g', -1, 64)
		}
	}
	return v
}

// typeName names a decoded value's type the way JSON Schema would.
func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case float64:
		return "number"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

// checker walks the decoded config and collects problems and warnings.
type checker struct {
	file     string
	dir      string // the agent folder, when files are to be checked
	problems []Problem
	warnings []string
}

func (c *checker) add(path, format string, args ...any) {
	c.problems = append(c.problems, Problem{File: c.file, Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (c *checker) warn(path, format string, args ...any) {
	p := Problem{File: c.file, Path: path, Msg: fmt.Sprintf(format, args...)}
	c.warnings = append(c.warnings, p.String())
}

// str reads m[key] as a string. A missing key is a problem when required; a
// present key of another type always is. ok is false when there was a problem
// or no value.
func (c *checker) str(m map[string]any, key, path string, required bool) (s string, ok bool) {
	v, present := m[key]
	if !present {
		if required {
			c.add(path, "missing; expected a string")
		}
		return "", false
	}
	s, ok = v.(string)
	if !ok {
		c.add(path, "expected a string, got %s", typeName(v))
	}
	return s, ok
}

// obj reads m[key] as an object; null and absent give nil without a problem.
func (c *checker) obj(m map[string]any, key, path string) (map[string]any, bool) {
	v := m[key]
	if v == nil {
		return nil, true
	}
	o, ok := v.(map[string]any)
	if !ok {
		c.add(path, "expected an object, got %s", typeName(v))
	}
	return o, ok
}

// topLevel lists the known top-level fields in the order they are checked.
var topLevel = []string{
	"agent_name", "description", "framework", "template", "version", "created_at",
	"template_source", "agent_id", "agent_architecture", "env_vars", "auth_settings",
	"persistent_folders", "metadata",
	"deployment", // how the platform server runs it: checked by internal/manager
}

func (c *checker) config(m map[string]any) *Config {
	cfg := &Config{}
	if s, ok := c.str(m, "agent_name", "agent_name", true); ok {
		if strings.TrimSpace(s) == "" {
			c.add("agent_name", "is empty; expected the agent's name")
		}
		cfg.AgentName = s
	}
	cfg.Description, _ = c.str(m, "description", "description", true)
	if s, ok := c.str(m, "framework", "framework", true); ok {
		if !KnownFramework(s) {
			c.add("framework", "%q is not a known framework; expected one of %s%s", s, strings.Join(frameworks, ", "), suggestFramework(s))
		}
		cfg.Framework = s
	}
	cfg.Template, _ = c.str(m, "template", "template", true)
	cfg.Version, _ = c.str(m, "version", "version", true)
	c.createdAt(m, cfg)
	c.templateSource(m, cfg)
	if s, ok := c.str(m, "agent_id", "agent_id", true); ok {
		if !IsUUID(s) {
			c.add("agent_id", "%q is not a UUID; expected the form %s (run `runagent init` to get a fresh one)", s, ZeroAgentID)
		} else if s == ZeroAgentID {
			c.warn("agent_id", "is the all-zero placeholder of a template; `runagent init` gives the agent a fresh UUID")
		}
		cfg.AgentID = s
	}
	c.architecture(m, cfg)
	cfg.EnvVars = c.envVars(m)
	c.authSettings(m, cfg)
	c.persistentFolders(m, cfg)
	if o, ok := c.obj(m, "metadata", "metadata"); ok {
		cfg.Metadata = o
	}
	keys := sortedKeys(m)
	for _, k := range keys {
		if !slices.Contains(topLevel, k) {
			c.warn("", "unknown field %q is ignored", k)
		}
	}
	return cfg
}

// IsUUID reports whether s is a UUID in its canonical 36-character form.
func IsUUID(s string) bool {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return false
	}
	_, err := uuid.Parse(s)
	return err == nil
}

func suggestFramework(s string) string {
	squash := func(s string) string {
		return strings.Map(func(r rune) rune {
			if r == '-' || r == '_' || r == ' ' || r == '.' {
				return -1
			}
			return unicode.ToLower(r)
		}, s)
	}
	for _, f := range frameworks {
		if squash(s) == f {
			return fmt.Sprintf(" (did you mean %q?)", f)
		}
	}
	return ""
}

// createdAtLayouts are the accepted created_at forms besides a bare date:
// "2006-01-02 15:04:05" as the original writes it and ISO 8601 / RFC 3339,
// with " " or "T", with or without seconds, fractional seconds (which Go
// accepts after the seconds of any layout) and a zone.
var createdAtLayouts = func() []string {
	var out []string
	for _, sep := range []string{" ", "T"} {
		for _, clock := range []string{"15:04:05", "15:04"} {
			for _, zone := range []string{"", "Z07:00", "Z0700", "Z07", " Z07:00", " MST"} {
				out = append(out, "2006-01-02"+sep+clock+zone)
			}
		}
	}
	return append(out, "2006-01-02")
}()

// ParseCreatedAt parses a created_at value; a time without a zone is UTC.
func ParseCreatedAt(s string) (time.Time, bool) {
	s = strings.TrimSpace(s)
	for _, layout := range createdAtLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

func (c *checker) createdAt(m map[string]any, cfg *Config) {
	s, ok := c.str(m, "created_at", "created_at", true)
	if !ok {
		return
	}
	t, ok := ParseCreatedAt(s)
	if !ok {
		c.add("created_at", "%q is not a date and time; expected \"2025-06-25 13:42:03\" or ISO 8601 like \"2025-06-25T13:42:03Z\"", s)
		return
	}
	cfg.CreatedAt, cfg.Created = s, t
}

func (c *checker) templateSource(m map[string]any, cfg *Config) {
	v, present := m["template_source"]
	if !present {
		c.add("template_source", "missing; expected an object with repo_url, author and path")
		return
	}
	ts, ok := v.(map[string]any)
	if !ok {
		c.add("template_source", "expected an object with repo_url, author and path, got %s", typeName(v))
		return
	}
	cfg.TemplateSource.RepoURL, _ = c.str(ts, "repo_url", "template_source.repo_url", true)
	cfg.TemplateSource.Author, _ = c.str(ts, "author", "template_source.author", true)
	cfg.TemplateSource.Path, _ = c.str(ts, "path", "template_source.path", true)
}

var (
	tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.\-]*$`)
	// maxTag bounds a tag's length.
	maxTag = 128
)

func (c *checker) architecture(m map[string]any, cfg *Config) {
	arch, ok := c.obj(m, "agent_architecture", "agent_architecture")
	if !ok || arch == nil {
		if ok {
			c.warn("agent_architecture", "no entrypoints; add agent_architecture.entrypoints to make the agent callable")
		}
		return
	}
	v, present := arch["entrypoints"]
	if !present {
		c.add("agent_architecture.entrypoints", "missing; expected an array of entrypoints like {\"file\": \"main.py\", \"module\": \"run\", \"tag\": \"chat\"}")
		return
	}
	list, ok := v.([]any)
	if !ok {
		c.add("agent_architecture.entrypoints", "expected an array of entrypoints, got %s", typeName(v))
		return
	}
	cfg.AgentArchitecture = &Architecture{Entrypoints: make([]domain.Entrypoint, 0, len(list))}
	if len(list) == 0 {
		c.warn("agent_architecture.entrypoints", "is empty; the agent has nothing to call")
	}
	firstUse := map[string]int{}
	for i, v := range list {
		path := fmt.Sprintf("agent_architecture.entrypoints[%d]", i)
		e, ok := v.(map[string]any)
		if !ok {
			c.add(path, "expected an object, got %s", typeName(v))
			continue
		}
		var ep domain.Entrypoint
		if _, hook := e["webhook_url"]; hook {
			ep = c.webhookEntrypoint(e, path, cfg.Framework)
		} else {
			ep = c.pythonEntrypoint(e, path, cfg.Framework)
		}
		ep.Extractor = c.extractor(e, path)
		if v, present := e["idempotent"]; present {
			if b, ok := v.(bool); ok {
				ep.Idempotent = b
			} else {
				c.add(path+".idempotent", "expected true or false, got %s", typeName(v))
			}
		}
		if ep.Tag != "" {
			if j, dup := firstUse[ep.Tag]; dup {
				c.add(path+".tag", "duplicate tag %q (first used by entrypoints[%d])", ep.Tag, j)
			} else {
				firstUse[ep.Tag] = i
			}
		}
		cfg.AgentArchitecture.Entrypoints = append(cfg.AgentArchitecture.Entrypoints, ep)
	}
}

var (
	pythonFields  = []string{"file", "module", "tag", "extractor", "idempotent"}
	webhookFields = []string{"webhook_url", "method", "tag", "timeout", "extractor", "idempotent"}
)

func (c *checker) tag(e map[string]any, path string) string {
	s, ok := c.str(e, "tag", path+".tag", true)
	switch {
	case !ok:
	case s == "":
		c.add(path+".tag", "is empty; expected a name like \"chat\" or \"chat_stream\"")
	case len(s) > maxTag:
		c.add(path+".tag", "is %d characters long; expected at most %d", len(s), maxTag)
	case !tagRE.MatchString(s):
		c.add(path+".tag", "%q has characters other than letters, digits, '_', '-' and '.'", s)
	}
	return s
}

func (c *checker) pythonEntrypoint(e map[string]any, path, framework string) domain.Entrypoint {
	var ep domain.Entrypoint
	if WebhookFramework(framework) {
		c.add(path, "framework %s takes webhook entrypoints (webhook_url, method, tag); this one has no webhook_url", framework)
	}
	if s, ok := c.str(e, "file", path+".file", true); ok {
		if s == "" {
			c.add(path+".file", "is empty; expected a Python file in the agent folder, like \"main.py\"")
		}
		ep.File = s
	}
	fileOK := false
	if c.dir != "" && ep.File != "" {
		if msg := checkEntrypointFile(c.dir, ep.File); msg != "" {
			c.add(path+".file", "%s", msg)
		} else {
			fileOK = true
		}
	}
	if s, ok := c.str(e, "module", path+".module", true); ok {
		if !isAttrPath(s) {
			c.add(path+".module", "%q is not a Python attribute path; expected a function name like \"run\" or an attribute of an object like \"app.invoke\"", s)
		} else if fileOK {
			if hint := moduleHint(c.dir, ep.File, s); hint != "" {
				c.warn(path+".module", "%s", hint)
			}
		}
		ep.Module = s
	}
	ep.Tag = c.tag(e, path)
	for _, k := range sortedKeys(e) {
		if !slices.Contains(pythonFields, k) {
			c.warn(path, "unknown field %q is ignored", k)
		}
	}
	return ep
}

func (c *checker) webhookEntrypoint(e map[string]any, path, framework string) domain.Entrypoint {
	var ep domain.Entrypoint
	if framework != "" && !WebhookFramework(framework) {
		c.add(path+".webhook_url", "webhook entrypoints need framework n8n; the framework is %q", framework)
	}
	if s, ok := c.str(e, "webhook_url", path+".webhook_url", true); ok {
		if !isHTTPURL(s) {
			c.add(path+".webhook_url", "%q is not an http(s) URL", s)
		}
		ep.WebhookURL = s
	}
	if s, ok := c.str(e, "method", path+".method", true); ok {
		if m := strings.ToLower(s); m != "post" && m != "get" {
			c.add(path+".method", "%q is not a webhook method; expected post or get", s)
		}
		ep.Method = s
	}
	ep.Tag = c.tag(e, path)
	ep.Timeout = DefaultWebhookTimeout
	if v, present := e["timeout"]; present {
		f, ok := v.(float64)
		switch {
		case !ok:
			c.add(path+".timeout", "expected a number of seconds, got %s", typeName(v))
		case f != math.Trunc(f) || f < 1 || f > math.MaxInt32:
			c.add(path+".timeout", "%v is not a whole number of seconds of at least 1", f)
		default:
			ep.Timeout = int(f)
		}
	}
	for _, k := range sortedKeys(e) {
		if !slices.Contains(webhookFields, k) {
			c.warn(path, "unknown field %q is ignored", k)
		}
	}
	return ep
}

func (c *checker) extractor(e map[string]any, path string) map[string]string {
	out := map[string]string{}
	o, ok := c.obj(e, "extractor", path+".extractor")
	if !ok {
		return out
	}
	for _, k := range sortedKeys(o) {
		kp := path + ".extractor" + keyPath(k)
		if k == "" {
			c.add(kp, "empty key; expected an output field name")
		}
		s, ok := o[k].(string)
		if !ok {
			c.add(kp, "expected a JSONPath string, got %s", typeName(o[k]))
			continue
		}
		if s == "" {
			c.add(kp, "is empty; expected a JSONPath like \"$.answer\"")
		}
		out[k] = s
	}
	return out
}

func (c *checker) envVars(m map[string]any) map[string]string {
	out := map[string]string{}
	o, ok := c.obj(m, "env_vars", "env_vars")
	if !ok {
		return out
	}
	for _, k := range sortedKeys(o) {
		kp := "env_vars" + keyPath(k)
		if k == "" || strings.ContainsAny(k, "=\x00") {
			c.add(kp, "%q is not a usable environment variable name", k)
		}
		s, ok := o[k].(string)
		if !ok {
			c.add(kp, "expected a string, got %s", typeName(o[k]))
			continue
		}
		if strings.ContainsRune(s, 0) {
			c.add(kp, "contains a NUL character")
		}
		out[k] = s
	}
	return out
}

// authTypes are the auth_settings.type values the contract names; others
// only draw a warning.
var authTypes = []string{"none", "api_key"}

func (c *checker) authSettings(m map[string]any, cfg *Config) {
	o, ok := c.obj(m, "auth_settings", "auth_settings")
	if !ok || o == nil {
		cfg.AuthSettings = map[string]any{"type": "none"}
		return
	}
	cfg.AuthSettings = o
	if v, present := o["type"]; present {
		s, ok := v.(string)
		switch {
		case !ok:
			c.add("auth_settings.type", "expected a string, got %s", typeName(v))
		case !slices.Contains(authTypes, s):
			c.warn("auth_settings.type", "%q is not one of %s", s, strings.Join(authTypes, ", "))
		}
	}
}

func (c *checker) persistentFolders(m map[string]any, cfg *Config) {
	v := m["persistent_folders"]
	cfg.PersistentFolders = []string{}
	if v == nil {
		return
	}
	list, ok := v.([]any)
	if !ok {
		c.add("persistent_folders", "expected an array of folder paths, got %s", typeName(v))
		return
	}
	for i, e := range list {
		p := fmt.Sprintf("persistent_folders[%d]", i)
		s, ok := e.(string)
		switch {
		case !ok:
			c.add(p, "expected a string, got %s", typeName(e))
			continue
		case s == "":
			c.add(p, "is empty; expected a folder path relative to the agent folder")
		case filepath.IsAbs(s) || strings.HasPrefix(s, "/"):
			c.add(p, "%q is an absolute path; expected a path relative to the agent folder", s)
		case !filepath.IsLocal(filepath.FromSlash(s)):
			c.add(p, "%q is outside the agent folder", s)
		}
		cfg.PersistentFolders = append(cfg.PersistentFolders, s)
	}
}

// isAttrPath reports whether s is a dotted path of Python identifiers.
func isAttrPath(s string) bool {
	if s == "" {
		return false
	}
	for part := range strings.SplitSeq(s, ".") {
		if part == "" {
			return false
		}
		for i, r := range part {
			if r == '_' || unicode.IsLetter(r) || (i > 0 && (unicode.IsDigit(r) || unicode.Is(unicode.Mn, r) || unicode.Is(unicode.Mc, r))) {
				continue
			}
			return false
		}
	}
	return true
}

func isHTTPURL(s string) bool {
	rest, ok := strings.CutPrefix(strings.ToLower(s), "https://")
	if !ok {
		rest, ok = strings.CutPrefix(strings.ToLower(s), "http://")
	}
	return ok && rest != "" && !strings.HasPrefix(rest, "/") && !strings.ContainsAny(s, " \t\r\n")
}

var simpleKeyRE = regexp.MustCompile(`^[A-Za-z0-9_\-]+$`)

// keyPath renders a map key as a path element: ".KEY", or `["a key"]` when
// it has other characters.
func keyPath(k string) string {
	if simpleKeyRE.MatchString(k) {
		return "." + k
	}
	return "[" + strconv.Quote(k) + "]"
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
