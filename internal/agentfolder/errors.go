package agentfolder

import (
	"errors"
	"strconv"
	"strings"
)

// ErrNoConfig is wrapped by the error Load returns for a folder without a
// config file.
var ErrNoConfig = errors.New("no agent config file")

// Problem is one thing wrong with an agent folder.
type Problem struct {
	File   string // base name of the file at fault, e.g. "runagent.config.json" or ".env"
	Line   int    // 1-based; 0 when unknown
	Column int    // 1-based; 0 when unknown
	Path   string // the field at fault, e.g. "agent_architecture.entrypoints[1].tag"; may be empty
	Msg    string
}

// String formats the problem as "FILE[:LINE[:COL]]: [PATH: ]MSG".
func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		b.WriteString(":" + strconv.Itoa(p.Line))
		if p.Column > 0 {
			b.WriteString(":" + strconv.Itoa(p.Column))
		}
	}
	b.WriteString(": ")
	if p.Path != "" {
		b.WriteString(p.Path + ": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// ValidationError holds every problem found in an agent folder.
type ValidationError struct {
	Dir      string // the agent folder, absolute
	Problems []Problem
}

// Error lists the problems, one per line.
func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}
