package testserver_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// readmeQuickStart returns the Go program of README.md's Quick start.
func readmeQuickStart(t *testing.T) string {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Quick start\n")
	if !ok {
		t.Fatal("README.md has no Quick start section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	_, code, ok := strings.Cut(section, "```go\n")
	if !ok {
		t.Fatal("the Quick start has no Go code block")
	}
	code, _, ok = strings.Cut(code, "\n```")
	if !ok {
		t.Fatal("the Quick start's Go code block does not end")
	}
	return code + "\n"
}

// between returns the lines of text strictly between the line holding from
// and the next line holding to (the end of text if to is empty), each
// trimmed of surrounding white space.
func between(t *testing.T, name, text, from, to string) []string {
	t.Helper()
	var out []string
	in := false
	for line := range strings.Lines(text) {
		switch {
		case !in && strings.Contains(line, from):
			in = true
		case in && to != "" && strings.Contains(line, to):
			return out
		case in:
			out = append(out, strings.TrimSpace(line))
		}
	}
	if !in || to != "" {
		t.Fatalf("%s: no lines between %q and %q", name, from, to)
	}
	return out
}

// TestReadmeQuickStartIsExample: the body of the README's program, after the
// line that names the address and the certificate file, is Example_quickStart
// line for line (indentation aside), and both point at what `make testserver`
// serves. So the Example's run proves that the program works as printed.
func TestReadmeQuickStartIsExample(t *testing.T) {
	const constLine = `const addr, caFile = "127.0.0.1:50051", "bin/testserver.pem"`
	// The program's closing brace is the last line of the block.
	readme := between(t, "README.md", readmeQuickStart(t), constLine, "")
	if len(readme) == 0 || readme[len(readme)-1] != "}" {
		t.Fatalf("the README's program does not end with main's closing brace: %q", readme)
	}
	readme = readme[:len(readme)-1]

	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	example := between(t, "example_test.go", string(src), "// README.md Quick start: from here.", "// README.md Quick start: to here.")
	if strings.Join(readme, "\n") != strings.Join(example, "\n") {
		t.Errorf("README.md's Quick start and Example_quickStart differ.\nREADME.md:\n%s\n\nexample_test.go:\n%s",
			strings.Join(readme, "\n"), strings.Join(example, "\n"))
	}

	makefile, err := os.ReadFile(filepath.Join("..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(makefile), "TESTSERVER_FLAGS ?= -tls -tls-cert-out bin/testserver.pem") {
		t.Error("`make testserver` no longer serves TLS with its certificate in bin/testserver.pem, as the Quick start says")
	}
}

// TestReadmeQuickStartCompiles builds the README's program exactly as
// printed, as quickstart/main.go in this module (through a build overlay, so
// nothing is written into the tree), which proves its imports and package
// clause too.
func TestReadmeQuickStartCompiles(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go build")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go is not on PATH")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	mainFile := filepath.Join(dir, "main.go")
	if err := os.WriteFile(mainFile, []byte(readmeQuickStart(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	overlay, err := json.Marshal(map[string]map[string]string{
		"Replace": {filepath.Join(root, "quickstart", "main.go"): mainFile},
	})
	if err != nil {
		t.Fatal(err)
	}
	overlayFile := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(overlayFile, overlay, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(goBin, "build", "-overlay", overlayFile, "-o", filepath.Join(dir, "quickstart"), "./quickstart")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("the README's Quick start does not compile: %v\n%s", err, out)
	}
}
