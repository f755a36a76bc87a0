package agentfolder

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"
)

// WriteAgentID sets agent_id in the config file of the agent folder dir, in
// place. Only the value changes: the rest of the file keeps its formatting,
// comments and key order. A missing agent_id is added as the last top-level
// field. (A YAML file whose agent_id is not a one-line scalar, or whose top
// level is a flow mapping, is re-encoded instead, which keeps comments but
// not all spacing.) id must be a UUID in canonical form.
func WriteAgentID(dir, id string) error {
	if !IsUUID(id) {
		return fmt.Errorf("agent id %q is not a UUID", id)
	}
	abs, err := resolveDir(dir)
	if err != nil {
		return err
	}
	name, _, err := findConfig(abs)
	if err != nil {
		return err
	}
	path := filepath.Join(abs, name)
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var out []byte
	if strings.HasSuffix(name, ".json") {
		out, err = setJSONAgentID(data, id)
	} else {
		out, err = setYAMLAgentID(data, id)
	}
	if err != nil {
		return fmt.Errorf("%s: cannot set agent_id: %w", name, err)
	}
	return os.WriteFile(path, out, st.Mode().Perm())
}

// setJSONAgentID replaces the value of every top-level "agent_id" key in the
// JSON object data, or adds the key before the closing brace.
func setJSONAgentID(data []byte, id string) ([]byte, error) {
	quoted, _ := json.Marshal(id)
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil {
		return nil, err
	} else if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("the top level is not an object")
	}
	type span struct{ start, end int }
	var spans []span
	firstKey := -1
	for dec.More() {
		afterPrev := int(dec.InputOffset())
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		if firstKey < 0 {
			firstKey = afterPrev + skipSpace(data[afterPrev:], ",")
		}
		afterKey := int(dec.InputOffset())
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, err
		}
		if key == "agent_id" {
			start := afterKey + skipSpace(data[afterKey:], ":")
			spans = append(spans, span{start, int(dec.InputOffset())})
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, err
	}
	closing := int(dec.InputOffset()) - 1
	out := bytes.Clone(data)
	if len(spans) > 0 {
		for i := len(spans) - 1; i >= 0; i-- {
			s := spans[i]
			out = append(out[:s.start], append(bytes.Clone(quoted), out[s.end:]...)...)
		}
		return out, nil
	}
	field := append([]byte(`"agent_id": `), quoted...)
	if firstKey < 0 { // an empty object
		return append(out[:closing], append(field, out[closing:]...)...), nil
	}
	// Put the new field after the last value, indented like the first key.
	last := bytes.TrimRight(out[:closing], " \t\r\n")
	sep := []byte(", ")
	if nl := bytes.LastIndexByte(data[:firstKey], '\n'); nl >= 0 {
		sep = append([]byte(",\n"), data[nl+1:firstKey]...)
	}
	rest := bytes.Clone(out[len(last):])
	out = append(append(append(last, sep...), field...), rest...)
	return out, nil
}

// skipSpace returns the number of leading bytes of b that are JSON
// whitespace or one of the characters in also.
func skipSpace(b []byte, also string) int {
	i := 0
	for i < len(b) && (strings.IndexByte(" \t\r\n", b[i]) >= 0 || strings.IndexByte(also, b[i]) >= 0) {
		i++
	}
	return i
}

// setYAMLAgentID replaces the top-level agent_id scalar in the YAML document
// data where it is written, or appends the key, falling back to a yaml.Node
// round trip when neither can be done in place.
func setYAMLAgentID(data []byte, id string) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("the top level is not a mapping")
	}
	root := doc.Content[0]
	var value *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "agent_id" {
			value = root.Content[i+1]
		}
	}
	if value == nil {
		if root.Style&yaml.FlowStyle == 0 && root.Column == 1 {
			out := bytes.Clone(data)
			if len(out) > 0 && out[len(out)-1] != '\n' {
				out = append(out, '\n')
			}
			return append(out, "agent_id: "+id+"\n"...), nil
		}
		root.Content = append(root.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "agent_id"},
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: id})
		return encodeYAML(&doc)
	}
	if out, ok := replaceYAMLScalar(data, value, id); ok {
		return out, nil
	}
	*value = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: id, LineComment: value.LineComment}
	return encodeYAML(&doc)
}

// replaceYAMLScalar rewrites the one-line scalar n in data with id, keeping
// its quoting style.
func replaceYAMLScalar(data []byte, n *yaml.Node, id string) ([]byte, bool) {
	if n.Kind != yaml.ScalarNode || n.Line < 1 || n.Column < 1 || n.Tag == "!!null" {
		return nil, false
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	if n.Line > len(lines) {
		return nil, false
	}
	line := []rune(string(lines[n.Line-1]))
	start := n.Column - 1
	if start >= len(line) {
		return nil, false
	}
	var end int
	var repl string
	switch n.Style {
	case 0: // plain
		end = start + len([]rune(n.Value))
		if end > len(line) || string(line[start:end]) != n.Value {
			return nil, false
		}
		repl = id
	case yaml.DoubleQuotedStyle:
		end = closingQuote(line, start, '"')
		repl = `"` + id + `"`
	case yaml.SingleQuotedStyle:
		end = closingQuote(line, start, '\'')
		repl = "'" + id + "'"
	default:
		return nil, false
	}
	if end < 0 {
		return nil, false
	}
	newLine := string(line[:start]) + repl + string(line[end:])
	var out []byte
	for i, l := range lines {
		if i == n.Line-1 {
			out = append(out, newLine...)
		} else {
			out = append(out, l...)
		}
	}
	return out, true
}

// closingQuote returns the index just past the quote that closes the quoted
// scalar opening at line[start], or -1 when it does not close on this line.
func closingQuote(line []rune, start int, q rune) int {
	if line[start] != q {
		return -1
	}
	for i := start + 1; i < len(line); i++ {
		switch {
		case q == '"' && line[i] == '\\':
			i++
		case line[i] == q && q == '\'' && i+1 < len(line) && line[i+1] == '\'':
			i++
		case line[i] == q:
			return i + 1
		}
	}
	return -1
}

func encodeYAML(doc *yaml.Node) ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
