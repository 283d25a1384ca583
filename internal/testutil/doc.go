// Package testutil is the test support that every test package of the
// repository shares, so that none keeps a copy of its own: a Clock that
// moves only when a test says so, and Main, a TestMain that fails the test
// binary when a test leaves a goroutine running and that lets a test
// re-execute its own binary as a helper process.
//
// It is internal: only this repository's tests (its nested modules included)
// may import it, and it is not part of the API.
package testutil
