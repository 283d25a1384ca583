package httpauth_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoGRPCImport: httpauth, and the challenge parser it shares with the
// interceptors, build without gRPC, so an HTTP-only program does not link
// it.
func TestNoGRPCImport(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for dep := range strings.Lines(string(out)) {
		if strings.HasPrefix(dep, "google.golang.org/grpc") || strings.HasPrefix(dep, "google.golang.org/protobuf") {
			t.Errorf("httpauth depends on %s", strings.TrimSpace(dep))
		}
	}
}
