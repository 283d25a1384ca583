package testutil

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// MainOption configures Main.
type MainOption func(*mainOptions)

type mainOptions struct {
	roles []role
	leak  []goleak.Option
}

type role struct {
	env string
	run func(value string) int
}

// Role makes the test binary run as a helper process instead of running
// its tests when the environment variable env is set (to anything but the
// empty string): Main exits with the code run returns, given env's value.
// This is how a test starts real processes from its own binary, for
// anything that crosses a process boundary (file locks, signals, fleets):
// it runs os.Args[0] with env set. Roles are checked in the order given.
func Role(env string, run func(value string) int) MainOption {
	return func(o *mainOptions) { o.roles = append(o.roles, role{env, run}) }
}

// IgnoreGoroutines passes opts to the leak check, for goroutines that a
// dependency starts once per process and never stops.
func IgnoreGoroutines(opts ...goleak.Option) MainOption {
	return func(o *mainOptions) { o.leak = append(o.leak, opts...) }
}

// Main is a test package's TestMain: it runs the tests and then fails the
// binary, naming the goroutines, if any is still running after they ended
// (go.uber.org/goleak). With a Role whose variable is set, it runs that
// role instead and exits with its code. Main never returns.
func Main(m *testing.M, opts ...MainOption) {
	var o mainOptions
	for _, opt := range opts {
		opt(&o)
	}
	for _, r := range o.roles {
		if v := os.Getenv(r.env); v != "" {
			os.Exit(r.run(v))
		}
	}
	goleak.VerifyTestMain(m, o.leak...)
}
