package domain_test

import (
	"go/build"
	"io/fs"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/runagent-go/runagent/"

// The import graph points down (docs/architecture.md): the domain and the
// protocol leaves at the bottom, the HTTP layer beside the execution layer
// and never under it, the CLI at the top. This test keeps it so; a new edge
// that breaks a rule below is a design change, so change the rule and the
// architecture page together.
func TestImportsPointDown(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	imports := internalImports(t, root)
	if _, ok := imports["internal/manager"]; !ok {
		t.Fatalf("the walk of %s found no internal/manager: %v", root, slices.Sorted(maps.Keys(imports)))
	}

	// only lists every internal package a package may import.
	only := map[string][]string{
		"internal/domain":                {},
		"internal/runproto":              {},
		"internal/wire":                  {"internal/domain"},
		"internal/dispatch":              {"internal/domain"},
		"internal/store":                 {"internal/domain", "internal/store/batch"},
		"internal/store/batch":           {"internal/domain"},
		"internal/store/pgstore":         {"internal/domain", "internal/store/batch"},
		"internal/store/storetest":       {"internal/domain"},
		"internal/sandbox":               {"internal/domain"},
		"internal/server":                {"internal/domain", "internal/wire"},
		"internal/platformapi":           {"internal/domain"},
		"internal/dispatch/natsdispatch": {"internal/domain", "internal/dispatch"},
		"internal/cluster":               {"internal/domain"},
	}
	for pkg, allowed := range only {
		got, ok := imports[pkg]
		if !ok {
			t.Errorf("%s: package not found (renamed? update this test and docs/architecture.md)", pkg)
			continue
		}
		for _, imp := range got {
			if !slices.Contains(allowed, imp) {
				t.Errorf("%s imports %s; it may import only %v", pkg, imp, allowed)
			}
		}
	}

	// never lists imports that would point up or sideways into another layer.
	never := map[string][]string{
		"internal/manager":  {"internal/server", "internal/store", "internal/platform", "internal/cli", "internal/cluster"},
		"internal/runner":   {"internal/server", "internal/manager", "internal/store", "internal/platform", "internal/cli"},
		"internal/platform": {"internal/cli"},
	}
	for pkg, banned := range never {
		for _, imp := range imports[pkg] {
			if slices.Contains(banned, imp) {
				t.Errorf("%s imports %s, which points up the layers", pkg, imp)
			}
		}
	}
	for pkg, got := range imports {
		if strings.HasPrefix(pkg, "cmd/") {
			continue
		}
		if slices.Contains(got, "internal/cli") {
			t.Errorf("%s imports internal/cli; only cmd/ may", pkg)
		}
	}
}

// internalImports maps each package under root (module-relative path) to the
// module's packages its non-test files import, for this GOOS.
func internalImports(t *testing.T, root string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		name := d.Name()
		if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules" || name == "sdk") {
			return filepath.SkipDir
		}
		p, err := build.ImportDir(path, 0)
		if err != nil {
			return nil // no Go files here
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		var mine []string
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, module) {
				mine = append(mine, strings.TrimPrefix(imp, module))
			}
		}
		out[rel] = mine
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
