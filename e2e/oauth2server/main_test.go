package oauth2server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// childEnv names the environment variable that turns the test binary into
// the restarted client process (see runChild).
const childEnv = "OAUTH2SERVER_TEST_CHILD"

func TestMain(m *testing.M) {
	testutil.Main(m, testutil.Role(childEnv, childMain))
}

// hangGuard bounds every wait for something that should happen in well under
// a second, so that a bug shows as a failure rather than a stuck test. It is
// not a timing assertion.
const hangGuard = 90 * time.Second

// callTimeout is each RPC's own deadline: generous, since it must never
// expire on a loaded machine.
const callTimeout = 30 * time.Second

// eventLog counts a Source's events by kind, forced refreshes separately.
type eventLog struct {
	mu     sync.Mutex
	kinds  map[tokensource.EventKind]int
	forced map[tokensource.EventKind]int
}

func newEventLog() *eventLog {
	return &eventLog{kinds: map[tokensource.EventKind]int{}, forced: map[tokensource.EventKind]int{}}
}

func (l *eventLog) observe(e tokensource.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.kinds[e.Kind]++
	if e.Forced {
		l.forced[e.Kind]++
	}
}

func (l *eventLog) count(k tokensource.EventKind) (all, forced int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.kinds[k], l.forced[k]
}

// dial connects to the resource server through the library's interceptors.
func dial(t testing.TB, addr string, creds credentials.TransportCredentials, src *tokensource.Source) echov1.EchoServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)},
		interceptor.DialOptions(src)...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return echov1.NewEchoServiceClient(conn)
}

// loadResult sums up the calls of runLoad.
type loadResult struct {
	calls, failed atomic.Int64
	unchanged     atomic.Int64 // failed calls whose error matches tokensource.ErrUnchangedToken
	mu            sync.Mutex
	codes         map[codes.Code]int // of the failed calls
	firstErr      error
}

func (r *loadResult) record(err error) {
	r.calls.Add(1)
	if err == nil {
		return
	}
	r.failed.Add(1)
	if errors.Is(err, tokensource.ErrUnchangedToken) {
		r.unchanged.Add(1)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.codes == nil {
		r.codes = map[codes.Code]int{}
	}
	r.codes[status.Code(err)]++
	if r.firstErr == nil {
		r.firstErr = err
	}
}

func (r *loadResult) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprintf("%d calls, %d failed %v (first: %v)", r.calls.Load(), r.failed.Load(), r.codes, r.firstErr)
}

// runLoad runs workers goroutines that call Echo back to back (paced
// lightly so that the machine's other work goes on) until stop is closed,
// or, when perWorker > 0, until each has made perWorker calls. want is the
// user the resource server must report.
func runLoad(ctx context.Context, echo echov1.EchoServiceClient, workers, perWorker int, stop <-chan struct{}, want string) *loadResult {
	res := &loadResult{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; perWorker == 0 || i < perWorker; i++ {
				if stop != nil {
					select {
					case <-stop:
						return
					default:
					}
				}
				cctx, cancel := context.WithTimeout(ctx, callTimeout)
				resp, err := echo.Echo(cctx, &echov1.EchoRequest{Message: fmt.Sprintf("w%d-%d", w, i)})
				cancel()
				if err == nil && resp.GetUser() != want {
					err = fmt.Errorf("resource server saw user %q, want %q", resp.GetUser(), want)
				}
				res.record(err)
				time.Sleep(5 * time.Millisecond) // pacing, not synchronisation
			}
		})
	}
	wg.Wait()
	return res
}

// --- the restarted client process ---------------------------------------

// childConfig tells the child process what to connect to.
type childConfig struct {
	Issuer    string // the authorization server
	TokenURL  string
	RSAddr    string // the resource server
	CAFile    string // PEM certificate both present
	Store     string // the FileStore path
	Refreshes int    // keep calling until the Source has refreshed this often
}

// childReport is what the child prints on stdout.
type childReport struct {
	Calls, Failed int
	Refreshes     uint64
	Reauth        bool
	Errors        []string // the first few errors
	TokenLoaded   int      // TokenLoaded events: the Source started from the Store
}

// runChild starts this test binary as a new process that acts as the
// restarted service: a new Source on the same FileStore, with no login. It
// returns the child's report.
func runChild(t *testing.T, a *authServer, r *resourceServer, store string, refreshes int) childReport {
	t.Helper()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := json.Marshal(childConfig{Issuer: a.issuer, TokenURL: a.appConfig().Endpoint.TokenURL, RSAddr: r.addr,
		CAFile: ca, Store: store, Refreshes: refreshes})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(cfg))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("child process: %v\nstderr:\n%s", err, stderr.String())
	}
	var rep childReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("child report %q: %v\nstderr:\n%s", stdout.String(), err, stderr.String())
	}
	return rep
}

// childMain is the restarted service: it trusts the servers' certificate,
// builds a Source on the FileStore without any initial token, and calls the
// resource server every 50 ms until the Source has refreshed
// cfg.Refreshes times and one more call has gone through.
func childMain(raw string) int {
	var cfg childConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	pemBytes, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	tlsCfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	httpClient := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: callTimeout}

	oauthCfg := &oauth2.Config{ClientID: appClient, ClientSecret: appSecret,
		Endpoint: oauth2.Endpoint{TokenURL: cfg.TokenURL, AuthStyle: oauth2.AuthStyleInHeader}}
	events := newEventLog()
	src := tokensource.New(tokensource.OAuth2Refresher(oauthCfg),
		tokensource.WithStore(tokensource.NewFileStore(cfg.Store)), tokensource.WithObserver(events.observe))
	defer src.Close()
	conn, err := grpc.NewClient(cfg.RSAddr, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg))},
		interceptor.DialOptions(src)...)...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	defer conn.Close()
	echo := echov1.NewEchoServiceClient(conn)

	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, httpClient)
	var rep childReport
	deadline := time.Now().Add(hangGuard / 2)
	for done := false; !done && time.Now().Before(deadline); {
		// Decide before the call, so that one call runs with the token of
		// the last refresh.
		done = src.Stats().Refreshes >= uint64(cfg.Refreshes)
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		resp, err := echo.Echo(cctx, &echov1.EchoRequest{Message: "after restart"})
		cancel()
		if err == nil && resp.GetUser() != user {
			err = fmt.Errorf("resource server saw user %q", resp.GetUser())
		}
		rep.Calls++
		if err != nil {
			rep.Failed++
			if len(rep.Errors) < 3 {
				rep.Errors = append(rep.Errors, err.Error())
			}
			if errors.Is(err, tokensource.ErrReauthRequired) {
				break // nothing will change without a login
			}
		}
		time.Sleep(50 * time.Millisecond) // pacing, not synchronisation
	}
	st := src.Stats()
	rep.Refreshes, rep.Reauth = st.Refreshes, st.ReauthRequired
	rep.TokenLoaded, _ = events.count(tokensource.TokenLoaded)
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	return 0
}
