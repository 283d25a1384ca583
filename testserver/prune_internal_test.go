package testserver

import (
	"testing"
	"time"
)

// TestPruneDropsOnlyDeadTokens issues enough tokens to trigger sweeps and
// checks that dead tokens leave the maps while live ones stay usable.
func TestPruneDropsOnlyDeadTokens(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s := New(WithClock(func() time.Time { return now }), WithAccessTokenTTL(time.Minute), WithRefreshTokenTTL(time.Hour))
	s.pruneThreshold = 4

	dead, err := s.IssueToken("old")
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Hour) // the first pair is now expired on both counts
	var live []string
	for range 8 {
		tok, err := s.IssueToken("new")
		if err != nil {
			t.Fatal(err)
		}
		live = append(live, tok.AccessToken)
	}
	s.mu.Lock()
	_, accessKept := s.access[dead.AccessToken]
	_, refreshKept := s.refresh[dead.RefreshToken]
	size := len(s.access)
	s.mu.Unlock()
	if accessKept || refreshKept {
		t.Error("an expired pair survived the sweep")
	}
	if size != len(live) {
		t.Errorf("%d access tokens kept, want the %d live ones", size, len(live))
	}
	for _, tok := range live {
		if _, why := s.checkAccess(tok); why != "" {
			t.Errorf("live token rejected after a sweep: %s", why)
		}
	}
	if _, why := s.checkAccess(dead.AccessToken); why == "" {
		t.Error("pruned token accepted")
	}
}
