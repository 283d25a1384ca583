// Package challenge reads authentication challenges (the WWW-Authenticate
// header of RFC 9110) and tells what a resource server's Bearer challenge
// (RFC 6750, RFC 9470) asks of a client. The HTTP transport (httpauth) and
// the gRPC interceptors (interceptor) share it, so both read a server's
// answer the same way; it imports no gRPC.
package challenge

// Limits on what one parse keeps, so that a hostile header costs memory in
// proportion to its length at most, and never more than these bounds.
const (
	// MaxChallenges is the most challenges kept from all the values parsed
	// together; the rest are ignored.
	MaxChallenges = 16
	// MaxParams is the most auth-params kept per challenge.
	MaxParams = 16
)

// Challenge is one challenge of a WWW-Authenticate header: an
// authentication scheme with either a token68 or a list of auth-params.
type Challenge struct {
	// Scheme is the authentication scheme as sent; schemes are
	// case-insensitive (compare with strings.EqualFold).
	Scheme string
	// Token68 is the challenge's token68, if it has one instead of params.
	Token68 string
	// Params are the challenge's auth-params in the order sent, quoted
	// values unquoted.
	Params []Param
}

// Param is one auth-param. Names are case-insensitive.
type Param struct{ Name, Value string }

// Param returns the value of the first param named name (compared
// case-insensitively, as RFC 9110 requires) and whether there is one.
func (c *Challenge) Param(name string) (string, bool) {
	for _, p := range c.Params {
		if equalFold(p.Name, name) {
			return p.Value, true
		}
	}
	return "", false
}

// Parse appends the challenges of one WWW-Authenticate field value to dst
// and returns the extended slice. It follows the RFC 9110 grammar:
//
//	WWW-Authenticate = #challenge
//	challenge        = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//	auth-param       = token BWS "=" BWS ( token / quoted-string )
//
// A field value that breaks the grammar keeps the challenges parsed before
// the break (a challenge cut short keeps its params so far); the rest of
// that value is ignored. Parse never fails and never allocates more than a
// bounded amount per challenge kept: unquoted values and quoted values
// without escapes are substrings of value.
func Parse(dst []Challenge, value string) []Challenge {
	p := parser{s: value}
	for len(dst) < MaxChallenges {
		p.skipListSeparators()
		if p.done() {
			return dst
		}
		scheme := p.token()
		if scheme == "" {
			return dst // not a challenge: give up on the rest
		}
		c := Challenge{Scheme: scheme}
		ok := p.challengeBody(&c)
		dst = append(dst, c)
		if !ok {
			return dst
		}
	}
	return dst
}

// ParseAll parses every field value of the header (a header may be sent as
// several field lines, each with one or more challenges).
func ParseAll(values []string) []Challenge {
	var cs []Challenge
	for _, v := range values {
		if len(cs) >= MaxChallenges {
			break
		}
		cs = Parse(cs, v)
	}
	return cs
}

type parser struct {
	s string
	i int
}

func (p *parser) done() bool { return p.i >= len(p.s) }

func (p *parser) peek() byte {
	if p.done() {
		return 0
	}
	return p.s[p.i]
}

// skipOWS skips optional whitespace (SP and HTAB).
func (p *parser) skipOWS() {
	for !p.done() && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

// skipListSeparators skips whitespace and the empty list elements that
// RFC 9110's list syntax allows (", ,").
func (p *parser) skipListSeparators() {
	for !p.done() && (p.s[p.i] == ' ' || p.s[p.i] == '\t' || p.s[p.i] == ',') {
		p.i++
	}
}

func (p *parser) token() string {
	start := p.i
	for !p.done() && isTchar(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i]
}

// challengeBody parses what follows a challenge's scheme, up to the next
// challenge or the end, into c. It reports false when the value breaks the
// grammar, and the rest of the value must be ignored.
func (p *parser) challengeBody(c *Challenge) bool {
	if p.done() {
		return true
	}
	switch p.peek() {
	case ',':
		return true
	case ' ', '\t':
	default:
		return false // "Bearerx=" and the like: no space after the scheme
	}
	p.skipOWS()
	if p.done() {
		return true
	}
	if p.peek() == ',' {
		return true
	}
	// A token68 stands alone: token68 characters, then '=' padding, then
	// the end or a comma. Anything else is the first auth-param.
	start := p.i
	for !p.done() && isToken68Char(p.s[p.i]) {
		p.i++
	}
	end := p.i
	for !p.done() && p.s[p.i] == '=' {
		p.i++
	}
	if end > start {
		paddedEnd := p.i
		p.skipOWS()
		if p.done() || p.peek() == ',' {
			c.Token68 = p.s[start:paddedEnd]
			return true
		}
	}
	p.i = start
	return p.params(c)
}

// params parses a challenge's auth-param list. It stops, reporting true,
// before a token that is not followed by "=": the scheme of the next
// challenge.
func (p *parser) params(c *Challenge) bool {
	for {
		p.skipListSeparators()
		if p.done() {
			return true
		}
		start := p.i
		name := p.token()
		if name == "" {
			return false
		}
		p.skipOWS()
		if p.peek() != '=' {
			p.i = start // the next challenge's scheme
			return true
		}
		p.i++ // '='
		p.skipOWS()
		var value string
		escaped := false
		if p.peek() == '"' {
			v, esc, ok := p.quoted()
			if !ok {
				return false
			}
			value, escaped = v, esc
		} else if value = p.token(); value == "" {
			return false
		}
		if len(c.Params) < MaxParams {
			if escaped {
				value = unescape(value) // only for a param kept: the one allocation per value
			}
			c.Params = append(c.Params, Param{Name: name, Value: value})
		}
		p.skipOWS()
		if p.done() {
			return true
		}
		if p.peek() != ',' {
			return false
		}
	}
}

// quoted parses a quoted-string at p.i and returns its raw content and
// whether it holds quoted-pairs (see unescape).
func (p *parser) quoted() (raw string, escaped, ok bool) {
	p.i++ // opening quote
	start := p.i
	for !p.done() {
		switch c := p.s[p.i]; {
		case c == '"':
			raw = p.s[start:p.i]
			p.i++
			return raw, escaped, true
		case c == '\\':
			if p.i+1 >= len(p.s) || !isQuotedPairChar(p.s[p.i+1]) {
				return "", false, false
			}
			escaped = true
			p.i += 2
		case isQdtext(c):
			p.i++
		default:
			return "", false, false
		}
	}
	return "", false, false // unterminated
}

// unescape resolves the quoted-pairs of raw, which quoted checked.
func unescape(raw string) string {
	b := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); i++ {
		if raw[i] == '\\' {
			i++
		}
		b = append(b, raw[i])
	}
	return string(b)
}

// IsToken reports whether s is a token of RFC 9110, section 5.6.2: one or
// more token characters. An HTTP field name is one.
func IsToken(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return s != ""
}

// isTchar reports the token characters of RFC 9110, section 5.6.2.
func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

// isToken68Char reports the characters of token68 before its '=' padding.
func isToken68Char(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '-', '.', '_', '~', '+', '/':
		return true
	}
	return false
}

// isQdtext reports qdtext: HTAB, SP, visible ASCII but '"' and '\', and
// obs-text.
func isQdtext(c byte) bool {
	return c == '\t' || c == ' ' || c == 0x21 || (0x23 <= c && c <= 0x5b) || (0x5d <= c && c <= 0x7e) || c >= 0x80
}

// isQuotedPairChar reports what may follow a backslash in a quoted-pair.
func isQuotedPairChar(c byte) bool {
	return c == '\t' || c == ' ' || (0x21 <= c && c <= 0x7e) || c >= 0x80
}

// equalFold is strings.EqualFold for the ASCII names of the grammar.
func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
