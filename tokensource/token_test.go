package tokensource

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

const (
	secretAccess  = "AT-very-secret-4711"
	secretRefresh = "RT-very-secret-0815"
)

func secretToken() Token {
	return Token{AccessToken: secretAccess, RefreshToken: secretRefresh,
		Expiry: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func assertNoSecret(t *testing.T, what, out string) {
	t.Helper()
	for _, s := range []string{secretAccess, secretRefresh, "very-secret"} {
		if strings.Contains(out, s) {
			t.Errorf("%s leaks a secret: %s", what, out)
		}
	}
}

func TestTokenFormatRedactsEveryVerb(t *testing.T) {
	tok := secretToken()
	const want = "tokensource.Token{AccessToken:<redacted> RefreshToken:<redacted> Expiry:2030-01-02T03:04:05Z}"
	verbs := []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%d", "%10.3v", "%-40s", "% x", "%t"}
	for _, verb := range verbs {
		for _, arg := range []any{tok, &tok} {
			out := fmt.Sprintf(verb, arg)
			assertNoSecret(t, fmt.Sprintf("%s of %T", verb, arg), out)
			if out != want {
				t.Errorf("Sprintf(%q, %T) = %q, want %q", verb, arg, out, want)
			}
		}
	}
	// %p prints the address of a *Token. (%p of a Token value is a vet error;
	// fmt then prints the raw fields without asking Format, as it does for a
	// Token value in an unexported struct field: hold a *Token instead.)
	assertNoSecret(t, "%p of *Token", fmt.Sprintf("%p", &tok))
	assertNoSecret(t, "*Token in an unexported field", fmt.Sprintf("%+v", struct{ p *Token }{&tok}))
	if got := fmt.Sprintf("%q", tok); got != fmt.Sprintf("%q", want) {
		t.Errorf("%%q = %s", got)
	}
	for name, out := range map[string]string{
		"String":   tok.String(),
		"GoString": tok.GoString(),
		"Sprint":   fmt.Sprint(tok, &tok),
		"Sprintln": fmt.Sprintln(tok, &tok),
		"slice":    fmt.Sprintf("%v", []*Token{&tok}),
		"struct":   fmt.Sprintf("%+v", struct{ T Token }{tok}),
		"struct#":  fmt.Sprintf("%#v", struct{ P *Token }{&tok}),
		"map":      fmt.Sprintf("%v", map[string]Token{"k": tok}),
		"error":    fmt.Errorf("refresh with %v failed", &tok).Error(),
	} {
		assertNoSecret(t, name, out)
		if !strings.Contains(out, "<redacted>") {
			t.Errorf("%s = %q, want the redacted form", name, out)
		}
	}
}

func TestTokenFormatEmptyAndNil(t *testing.T) {
	var empty Token
	if got, want := fmt.Sprint(empty), `tokensource.Token{AccessToken:"" RefreshToken:"" Expiry:never}`; got != want {
		t.Errorf("empty token = %q, want %q", got, want)
	}
	var nilTok *Token
	for _, verb := range []string{"%v", "%+v", "%s", "%#v"} {
		if got := fmt.Sprintf(verb, nilTok); got != "<nil>" {
			t.Errorf("Sprintf(%q, nil *Token) = %q, want <nil>", verb, got)
		}
	}
	if got := nilTok.String(); got != "<nil>" {
		t.Errorf("nil.String() = %q", got)
	}
}

func TestTokenSlogRedacts(t *testing.T) {
	tok := secretToken()
	for name, h := range map[string]func(*bytes.Buffer) slog.Handler{
		"text": func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
		"json": func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
	} {
		var buf bytes.Buffer
		l := slog.New(h(&buf))
		l.Info("value", "tok", tok)
		l.Info("pointer", "tok", &tok)
		l.Info("any", slog.Any("tok", tok))
		l.With("tok", &tok).Info("with")
		l.Info("group", slog.Group("g", "tok", tok))
		out := buf.String()
		assertNoSecret(t, name+" handler", out)
		if got := strings.Count(out, "access_token_set"); got != 5 {
			t.Errorf("%s handler: token logged as a group %d times, want 5:\n%s", name, got, out)
		}
		if !strings.Contains(out, "2030-01-02T03:04:05Z") {
			t.Errorf("%s handler: expiry missing:\n%s", name, out)
		}
	}
}

func TestPermanent(t *testing.T) {
	base := errors.New("invalid_grant")
	if Permanent(nil) != nil {
		t.Error("Permanent(nil) != nil")
	}
	p := Permanent(base)
	wrapped := fmt.Errorf("refresher: %w", p)
	if !IsPermanent(p) || !IsPermanent(wrapped) || IsPermanent(base) {
		t.Error("IsPermanent is wrong")
	}
	if !errors.Is(wrapped, base) || p.Error() != base.Error() {
		t.Error("Permanent hides the error it wraps")
	}
}
