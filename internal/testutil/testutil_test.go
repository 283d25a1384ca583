package testutil_test

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
)

const roleEnv = "TESTUTIL_TEST_ROLE"

func TestMain(m *testing.M) {
	testutil.Main(m, testutil.Role(roleEnv, func(v string) int {
		if v == "exit-7" {
			return 7
		}
		return 0
	}))
}

func TestClock(t *testing.T) {
	c := testutil.NewClock(testutil.Epoch)
	if got := c.Now(); !got.Equal(testutil.Epoch) {
		t.Fatalf("Now = %v, want %v", got, testutil.Epoch)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				c.Advance(time.Second)
				_ = c.Now()
			}
		})
	}
	wg.Wait()
	if got, want := c.Now(), testutil.Epoch.Add(800*time.Second); !got.Equal(want) {
		t.Errorf("after 800 concurrent Advance(1s): Now = %v, want %v", got, want)
	}
	c.Advance(-time.Hour)
	if got, want := c.Now(), testutil.Epoch.Add(800*time.Second-time.Hour); !got.Equal(want) {
		t.Errorf("after Advance(-1h): Now = %v, want %v", got, want)
	}
	c.Set(testutil.Epoch)
	if got := c.Now(); !got.Equal(testutil.Epoch) {
		t.Errorf("after Set: Now = %v, want %v", got, testutil.Epoch)
	}
}

// TestRole runs this test binary as a real helper process: the role's exit
// code must come back, and the tests must not run in it.
func TestRole(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=exit-7")
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("helper process: %v, want exit status 7", err)
	}
	cmd = exec.Command(os.Args[0], "-test.run=^TestClock$")
	cmd.Env = append(os.Environ(), roleEnv+"=other")
	if out, err := cmd.CombinedOutput(); err != nil || len(out) != 0 {
		t.Fatalf("helper process with another role: %v, output %q; want exit 0 and no test output", err, out)
	}
}

const leakEnv = "TESTUTIL_TEST_LEAK"

// TestLeakFixture leaks a goroutine, but only in the process that
// TestLeakFailsBinary starts; in a normal run it does nothing.
func TestLeakFixture(t *testing.T) {
	if os.Getenv(leakEnv) == "" {
		return
	}
	block := make(chan struct{})
	go func() { <-block }()
}

// TestLeakFailsBinary: a test that leaves a goroutine behind must fail the
// test binary even though the test itself passed.
func TestLeakFailsBinary(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestLeakFixture$")
	cmd.Env = append(os.Environ(), leakEnv+"=1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(string(out), "found unexpected goroutines") {
		t.Fatalf("binary with a leaked goroutine: %v, output %q; want a failure naming the leak", err, out)
	}
}
