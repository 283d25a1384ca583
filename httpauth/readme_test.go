package httpauth_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadmeHTTPClientsIsExample: the Go code of README.md's "HTTP clients"
// section is the marked part of Example line for line (indentation aside),
// so the Example's run proves that it works as printed.
func TestReadmeHTTPClientsIsExample(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## HTTP clients\n")
	if !ok {
		t.Fatal("README.md has no HTTP clients section")
	}
	_, code, ok := strings.Cut(section, "```go\n")
	if !ok {
		t.Fatal("the HTTP clients section has no Go code block")
	}
	code, _, ok = strings.Cut(code, "\n```")
	if !ok {
		t.Fatal("the Go code block does not end")
	}
	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	_, example, ok := strings.Cut(string(src), "// README.md HTTP clients: from here.\n")
	if !ok {
		t.Fatal("example_test.go has no start marker")
	}
	example, _, ok = strings.Cut(example, "// README.md HTTP clients: to here.")
	if !ok {
		t.Fatal("example_test.go has no end marker")
	}
	if got, want := trimLines(code), trimLines(example); got != want {
		t.Errorf("README.md's HTTP clients code and Example differ.\nREADME.md:\n%s\n\nexample_test.go:\n%s", got, want)
	}
}

func trimLines(s string) string {
	var out []string
	for line := range strings.Lines(s) {
		if l := strings.TrimSpace(line); l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
