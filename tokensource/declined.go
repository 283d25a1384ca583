package tokensource

import "time"

// MinRefreshInterval returns the configured minimum interval between forced
// refreshes (WithMinRefreshInterval; 0 means no limit). When a forced
// refresh would start sooner, Refresh hands back the rejected token instead
// of refreshing, and a caller such as the interceptor package can say so in
// the error of the call it does not retry.
func (s *Source) MinRefreshInterval() time.Duration { return s.opts.minRefreshInterval }
