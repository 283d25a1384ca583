package challenge

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// The examples are quoted from the RFCs (folded lines joined with a space,
// as a recipient unfolds them) and from the headers Auth0's
// express-oauth2-jwt-bearer middleware sends.
func TestParse(t *testing.T) {
	p := func(kv ...string) []Param {
		var ps []Param
		for i := 0; i < len(kv); i += 2 {
			ps = append(ps, Param{kv[i], kv[i+1]})
		}
		return ps
	}
	for _, tc := range []struct {
		name   string
		values []string
		want   []Challenge
	}{
		{"RFC 6750 section 3", []string{`Bearer realm="example"`},
			[]Challenge{{Scheme: "Bearer", Params: p("realm", "example")}}},
		{"RFC 6750 section 3 expired", []string{`Bearer realm="example", error="invalid_token", error_description="The access token expired"`},
			[]Challenge{{Scheme: "Bearer", Params: p("realm", "example", "error", "invalid_token", "error_description", "The access token expired")}}},
		{"RFC 6750 section 3.1 insufficient_scope", []string{`Bearer realm="example", error="insufficient_scope", scope="openid profile"`},
			[]Challenge{{Scheme: "Bearer", Params: p("realm", "example", "error", "insufficient_scope", "scope", "openid profile")}}},
		{"RFC 9110 section 11.6.1", []string{`Basic realm="simple", Newauth realm="apps", type=1, title="Login to \"apps\""`},
			[]Challenge{
				{Scheme: "Basic", Params: p("realm", "simple")},
				{Scheme: "Newauth", Params: p("realm", "apps", "type", "1", "title", `Login to "apps"`)},
			}},
		{"RFC 9110 section 11.6.1 reversed", []string{`Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple"`},
			[]Challenge{
				{Scheme: "Newauth", Params: p("realm", "apps", "type", "1", "title", `Login to "apps"`)},
				{Scheme: "Basic", Params: p("realm", "simple")},
			}},
		{"RFC 9470 section 3 acr_values", []string{`Bearer error="insufficient_user_authentication", error_description="A different authentication level is required", acr_values="myACR"`},
			[]Challenge{{Scheme: "Bearer", Params: p("error", "insufficient_user_authentication", "error_description", "A different authentication level is required", "acr_values", "myACR")}}},
		{"RFC 9470 section 3 max_age", []string{`Bearer error="insufficient_user_authentication", error_description="More recent authentication is required", max_age="5"`},
			[]Challenge{{Scheme: "Bearer", Params: p("error", "insufficient_user_authentication", "error_description", "More recent authentication is required", "max_age", "5")}}},
		{"Auth0 expired token with DPoP", []string{`Bearer realm="api", error="invalid_token", error_description="'exp' claim timestamp check failed", DPoP algs="RS256 ES256"`},
			[]Challenge{
				{Scheme: "Bearer", Params: p("realm", "api", "error", "invalid_token", "error_description", "'exp' claim timestamp check failed")},
				{Scheme: "DPoP", Params: p("algs", "RS256 ES256")},
			}},
		{"Auth0 missing scope", []string{`Bearer realm="api", error="insufficient_scope", error_description="Insufficient Scope", scope="echo:admin"`},
			[]Challenge{{Scheme: "Bearer", Params: p("realm", "api", "error", "insufficient_scope", "error_description", "Insufficient Scope", "scope", "echo:admin")}}},
		{"several field lines", []string{`DPoP algs="ES256"`, `Bearer realm="api"`},
			[]Challenge{{Scheme: "DPoP", Params: p("algs", "ES256")}, {Scheme: "Bearer", Params: p("realm", "api")}}},
		{"token68", []string{`Basic YWxhZGRpbjpvcGVuc2VzYW1l`},
			[]Challenge{{Scheme: "Basic", Token68: "YWxhZGRpbjpvcGVuc2VzYW1l"}}},
		{"token68 with padding, then another challenge", []string{`Negotiate a87421000492aa874209af8bc028==, Bearer realm="x"`},
			[]Challenge{{Scheme: "Negotiate", Token68: "a87421000492aa874209af8bc028=="}, {Scheme: "Bearer", Params: p("realm", "x")}}},
		{"bare schemes and empty list elements", []string{` , Negotiate,, Bearer ,`},
			[]Challenge{{Scheme: "Negotiate"}, {Scheme: "Bearer"}}},
		{"bad whitespace around =", []string{"Bearer realm = \"a b\",\terror =invalid_token"},
			[]Challenge{{Scheme: "Bearer", Params: p("realm", "a b", "error", "invalid_token")}}},
		{"unterminated quote keeps what came before", []string{`Basic realm="a", Bearer error="insufficient_scope", scope="x`},
			[]Challenge{{Scheme: "Basic", Params: p("realm", "a")}, {Scheme: "Bearer", Params: p("error", "insufficient_scope")}}},
		{"garbage", []string{`"Bearer"`, `=`, `Bearer=x`}, []Challenge{{Scheme: "Bearer"}}},
		{"empty", []string{""}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ParseAll(tc.values); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ParseAll(%q)\n got %+v\nwant %+v", tc.values, got, tc.want)
			}
		})
	}
}

func TestParamCaseInsensitive(t *testing.T) {
	cs := ParseAll([]string{`BEARER Error="insufficient_scope", SCOPE="a"`})
	c, ok := Bearer(cs)
	if !ok {
		t.Fatalf("no Bearer challenge in %+v", cs)
	}
	if v, _ := c.Param("error"); v != "insufficient_scope" {
		t.Errorf("error = %q", v)
	}
	if v, _ := c.Param("scope"); v != "a" {
		t.Errorf("scope = %q", v)
	}
}

func TestError(t *testing.T) {
	for _, tc := range []struct {
		name      string
		header    []string
		trailer   []string
		wantScope string // "" and !stepUp: want nil
		stepUp    *tokensource.StepUpError
	}{
		{name: "none"},
		{name: "realm only", header: []string{`Bearer realm="example"`}},
		{name: "invalid_token", header: []string{`Bearer realm="example", error="invalid_token", error_description="The access token expired"`}},
		{name: "Auth0 expired token with DPoP", header: []string{`Bearer realm="api", error="invalid_token", error_description="'exp' claim timestamp check failed", DPoP algs="RS256 ES256"`}},
		{name: "Auth0 missing scope", header: []string{`Bearer realm="api", error="insufficient_scope", error_description="Insufficient Scope", scope="echo:admin"`}, wantScope: "echo:admin"},
		{name: "DPoP's insufficient_scope is ignored", header: []string{`DPoP algs="ES256", error="insufficient_scope", scope="x"`}},
		{name: "DPoP first, Bearer's code counts", header: []string{`DPoP algs="ES256", error="invalid_token"`, `Bearer error="insufficient_scope", scope="a b"`}, wantScope: "a b"},
		{name: "in the trailer", trailer: []string{`Bearer error="insufficient_scope", scope="admin"`}, wantScope: "admin"},
		{name: "RFC 9470 acr_values", header: []string{`Bearer error="insufficient_user_authentication", error_description="A different authentication level is required", acr_values="myACR"`},
			stepUp: &tokensource.StepUpError{ACRValues: "myACR", Description: "A different authentication level is required"}},
		{name: "RFC 9470 max_age", header: []string{`Bearer error="insufficient_user_authentication", error_description="More recent authentication is required", max_age="5"`},
			stepUp: &tokensource.StepUpError{MaxAge: 5 * time.Second, HasMaxAge: true, Description: "More recent authentication is required"}},
		{name: "max_age 0 and two acr values", header: []string{`Bearer error="insufficient_user_authentication", acr_values="phr phrh", max_age=0`},
			stepUp: &tokensource.StepUpError{ACRValues: "phr phrh", HasMaxAge: true}},
		{name: "max_age out of range is left out", header: []string{`Bearer error="insufficient_user_authentication", max_age=99999999999999999999`},
			stepUp: &tokensource.StepUpError{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Error(tc.header, tc.trailer)
			switch {
			case tc.wantScope != "":
				var se *tokensource.ScopeError
				if !errors.Is(err, tokensource.ErrInsufficientScope) || !errors.As(err, &se) || se.Scope != tc.wantScope {
					t.Fatalf("Error = %v, want a ScopeError for %q", err, tc.wantScope)
				}
			case tc.stepUp != nil:
				var su *tokensource.StepUpError
				if !errors.Is(err, tokensource.ErrStepUpRequired) || !errors.As(err, &su) {
					t.Fatalf("Error = %v, want a StepUpError", err)
				}
				if *su != *tc.stepUp {
					t.Fatalf("StepUpError = %+v, want %+v", *su, *tc.stepUp)
				}
			default:
				if err != nil {
					t.Fatalf("Error = %v, want nil", err)
				}
			}
		})
	}
}

func TestErrorMessages(t *testing.T) {
	err := Error([]string{`Bearer error="insufficient_scope", scope="echo:admin", error_description="line\"1"`})
	want := `tokensource: the server requires a scope the token lacks: the server requires scope "echo:admin": "line\"1"`
	if err == nil || err.Error() != want {
		t.Errorf("message = %v\nwant %s", err, want)
	}
	err = Error([]string{`Bearer error="insufficient_user_authentication", acr_values="gold", max_age=60`})
	want = `tokensource: the server requires a stronger or more recent user authentication (acr_values "gold", max_age 1m0s)`
	if err == nil || err.Error() != want {
		t.Errorf("message = %v\nwant %s", err, want)
	}
}

// A megabyte of challenges and escaped params costs no more allocations
// than the limits allow, and keeps only that many.
func TestParseHostileHeaderBounded(t *testing.T) {
	for name, v := range map[string]string{
		"escaped params": "Bearer " + strings.Repeat(`a="\"\\\"", `, 1<<16),
		"challenges":     strings.Repeat(`Bearer realm="\x", `, 1<<16),
		"commas":         strings.Repeat(",", 1<<20),
	} {
		var cs []Challenge
		allocs := testing.AllocsPerRun(5, func() { cs = Parse(nil, v) })
		if len(cs) > MaxChallenges || allocs > 8+MaxChallenges*(8+2*MaxParams) {
			t.Errorf("%s: %d challenges, %v allocations for %d bytes", name, len(cs), allocs, len(v))
		}
	}
}
