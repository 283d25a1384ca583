package challenge

import (
	"strconv"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// Header is the name of the challenge header: canonical for HTTP; gRPC
// metadata keys are its lower-case form, HeaderKey.
const (
	Header    = "Www-Authenticate"
	HeaderKey = "www-authenticate"
)

// Bearer returns the first Bearer challenge among cs (challenges for
// another scheme, such as DPoP beside Bearer, are not looked at).
func Bearer(cs []Challenge) (*Challenge, bool) {
	for i := range cs {
		if equalFold(cs[i].Scheme, "Bearer") {
			return &cs[i], true
		}
	}
	return nil, false
}

// Error returns what the Bearer challenge among the field values in each of
// lists means for a client: a *tokensource.ScopeError for
// insufficient_scope, a *tokensource.StepUpError for
// insufficient_user_authentication, and nil for anything else (no Bearer
// challenge, invalid_token, no error code, an error code RFC 6750 does not
// define), where a refresh may help or the response says nothing about it.
func Error(lists ...[]string) error {
	n := 0
	for _, l := range lists {
		n += len(l)
	}
	if n == 0 {
		return nil
	}
	var cs []Challenge
	for _, l := range lists {
		for _, v := range l {
			if len(cs) >= MaxChallenges {
				break
			}
			cs = Parse(cs, v)
		}
	}
	c, ok := Bearer(cs)
	if !ok {
		return nil
	}
	code, _ := c.Param("error")
	desc, _ := c.Param("error_description")
	switch code {
	case "insufficient_scope":
		scope, _ := c.Param("scope")
		return &tokensource.ScopeError{Scope: scope, Description: desc}
	case "insufficient_user_authentication":
		e := &tokensource.StepUpError{Description: desc}
		e.ACRValues, _ = c.Param("acr_values")
		if v, ok := c.Param("max_age"); ok {
			if secs, err := strconv.ParseInt(v, 10, 64); err == nil && secs >= 0 && secs <= maxAgeSeconds {
				e.MaxAge, e.HasMaxAge = time.Duration(secs)*time.Second, true
			}
		}
		return e
	}
	return nil
}

// maxAgeSeconds keeps a max_age within what a time.Duration holds.
const maxAgeSeconds = int64(time.Duration(1<<63-1) / time.Second)
