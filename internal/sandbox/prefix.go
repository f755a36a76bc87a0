package sandbox

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Prefixes finds each interpreter's installation prefix (sys.base_prefix),
// which a sandbox must show read-only, and remembers it. The zero value is
// ready to use.
type Prefixes struct {
	mu sync.Mutex
	m  map[string]string
}

// Get asks python once; later calls answer from memory.
func (c *Prefixes) Get(ctx context.Context, python string) (string, error) {
	c.mu.Lock()
	p, ok := c.m[python]
	c.mu.Unlock()
	if ok {
		return p, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// -I -S: no site, so no .pth file of the agent's packages runs on the host.
	out, err := exec.CommandContext(ctx, python, "-I", "-S", "-c", "import sys; print(sys.base_prefix)").Output()
	if err != nil {
		return "", fmt.Errorf("find the installation of %s: %w", python, err)
	}
	p = strings.TrimSpace(string(out))
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%s reports prefix %q", python, p)
	}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]string{}
	}
	c.m[python] = p
	c.mu.Unlock()
	return p, nil
}
