package challenge

import (
	"reflect"
	"strings"
	"testing"
)

// FuzzParse feeds hostile WWW-Authenticate values to the parser: it must
// not panic, must keep within its limits, must allocate no more than a
// bounded amount that also grows no faster than the input, and what it
// returns must be a faithful reading (written back canonically, it parses
// to the same challenges).
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`Bearer realm="example", error="invalid_token", error_description="The access token expired"`,
		`Basic realm="simple", Newauth realm="apps", type=1, title="Login to \"apps\""`,
		`Bearer error="insufficient_user_authentication", error_description="More recent authentication is required", max_age="5"`,
		`Bearer realm="api", error="invalid_token", error_description="'exp' claim timestamp check failed", DPoP algs="RS256 ES256"`,
		`Negotiate a87421000492aa874209af8bc028==, Bearer realm="x"`,
		` , Negotiate,, Bearer ,`,
		`Bearer a="\"\\\"\\\"\\\"", b="\x"`,
		strings.Repeat(`A a="\b", `, 300),
		strings.Repeat(`Bearer,`, 100),
		"Bearer realm=\"\x80\xff\"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		cs := Parse(nil, v)
		if len(cs) > MaxChallenges {
			t.Fatalf("%d challenges, limit %d", len(cs), MaxChallenges)
		}
		for _, c := range cs {
			if c.Scheme == "" || len(c.Params) > MaxParams || (c.Token68 != "" && len(c.Params) > 0) {
				t.Fatalf("bad challenge %+v", c)
			}
		}
		// Every allocation needs a few bytes of input (a challenge, a
		// param, an escape), and the limits cap their number.
		const ceiling = 8 + MaxChallenges*(8+2*MaxParams)
		allocs := testing.AllocsPerRun(1, func() { Parse(nil, v) })
		if allocs > ceiling || allocs > float64(8+len(v)) {
			t.Fatalf("%v allocations for %d bytes (ceiling %d)", allocs, len(v), ceiling)
		}
		again := Parse(nil, format(cs))
		if len(cs) == 0 {
			cs = nil
		}
		if !reflect.DeepEqual(again, cs) {
			t.Fatalf("reparsed %q\n got %+v\nwant %+v", format(cs), again, cs)
		}
		_ = Error([]string{v})
	})
}

// format writes challenges back as one field value, every param value
// quoted.
func format(cs []Challenge) string {
	var b strings.Builder
	for i, c := range cs {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(c.Scheme)
		if c.Token68 != "" {
			b.WriteString(" " + c.Token68)
		}
		for j, p := range c.Params {
			if j == 0 {
				b.WriteString(" ")
			} else {
				b.WriteString(", ")
			}
			b.WriteString(p.Name + `="`)
			for k := 0; k < len(p.Value); k++ {
				if p.Value[k] == '"' || p.Value[k] == '\\' {
					b.WriteByte('\\')
				}
				b.WriteByte(p.Value[k])
			}
			b.WriteString(`"`)
		}
	}
	return b.String()
}
