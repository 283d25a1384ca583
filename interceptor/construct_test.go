package interceptor_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// A nil TokenSource, a typed nil pointer included, makes each constructor
// panic at once, with a message that names the mistake, rather than the
// first call fail with a nil pointer dereference.
func TestConstructorsPanicOnNilSource(t *testing.T) {
	var nilSource *tokensource.Source
	constructors := map[string]func(interceptor.TokenSource){
		"UnaryClientInterceptor":  func(s interceptor.TokenSource) { interceptor.UnaryClientInterceptor(s) },
		"StreamClientInterceptor": func(s interceptor.TokenSource) { interceptor.StreamClientInterceptor(s) },
		"DialOptions":             func(s interceptor.TokenSource) { interceptor.DialOptions(s, interceptor.AllowInsecure()) },
	}
	sources := []struct {
		name string
		src  interceptor.TokenSource
		want string
	}{
		{"untyped nil", nil, "interceptor: the TokenSource is nil"},
		{"nil *tokensource.Source", nilSource, "interceptor: the TokenSource is nil (a nil *tokensource.Source)"},
		{"nil custom source", (*fakeSource)(nil), "interceptor: the TokenSource is nil (a nil *interceptor_test.fakeSource)"},
	}
	for name, construct := range constructors {
		for _, s := range sources {
			t.Run(name+"/"+s.name, func(t *testing.T) {
				defer func() {
					if got := recover(); got != s.want {
						t.Errorf("panic = %v, want %q", got, s.want)
					}
				}()
				construct(s.src)
			})
		}
	}
}

// NewClient takes no TokenSource but a function that makes one: a nil
// result, typed or not, is an error (the connection is closed), never a
// panic and never a failure at the first call.
func TestNewClientNilSourceIsAnError(t *testing.T) {
	_, ep := startTLSServer(t)
	for name, newSource := range map[string]func(grpc.ClientConnInterface) interceptor.TokenSource{
		"untyped nil":             func(grpc.ClientConnInterface) interceptor.TokenSource { return nil },
		"nil *tokensource.Source": func(grpc.ClientConnInterface) interceptor.TokenSource { return (*tokensource.Source)(nil) },
	} {
		t.Run(name, func(t *testing.T) {
			conn, _, err := interceptor.NewClient(ep.Target(), newSource, ep.DialOptions()...)
			if err == nil || conn != nil || !strings.Contains(err.Error(), "nil TokenSource") {
				t.Fatalf("NewClient = %v, %v; want an error about the nil TokenSource", conn, err)
			}
		})
	}
}
