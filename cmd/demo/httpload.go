package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/httpauth"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// httpFigures is the HTTP side of the revocation phase: requests sent with
// the phase's Source through httpauth to the embedded server's HTTP
// handler, beside the gRPC calls.
type httpFigures struct {
	Callers  int   `json:"callers"`
	Requests int64 `json:"requests"`
	OK       int64 `json:"ok"`
	Failed   int64 `json:"failed"`
	// Rejected counts the 401s the server answered; each was a request the
	// transport retried with the refreshed token.
	Rejected int64  `json:"rejected"`
	FirstErr string `json:"first_error,omitempty"`
}

// httpLoad runs callers that send GET requests back to back until stop is
// closed.
type httpLoad struct {
	api    *httptest.Server
	client *http.Client
	fig    httpFigures
	ok     atomic.Int64
	failed atomic.Int64
	reject atomic.Int64
	mu     sync.Mutex
	wg     sync.WaitGroup
}

// startHTTPLoad serves srv's HTTP handler over TLS on loopback and starts
// callers that reach it through httpauth.NewTransport(src, ...).
func startHTTPLoad(ctx context.Context, srv *testserver.Server, src *tokensource.Source, callers int, timeout time.Duration, stop <-chan struct{}) *httpLoad {
	l := &httpLoad{fig: httpFigures{Callers: callers}}
	handler := srv.HTTPHandler()
	l.api = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &codeRecorder{ResponseWriter: w, code: http.StatusOK}
		handler.ServeHTTP(rec, r)
		if rec.code == http.StatusUnauthorized {
			l.reject.Add(1)
		}
	}))
	l.api.Config.ErrorLog = log.New(io.Discard, "", 0)
	l.api.StartTLS()
	l.client = &http.Client{Transport: httpauth.NewTransport(src, l.api.Client().Transport)}
	callCtx := context.WithoutCancel(ctx)
	for i := range callers {
		l.wg.Go(func() {
			msg := fmt.Sprintf("http-%d", i)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := l.get(callCtx, msg, timeout); err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					if l.fig.FirstErr == "" {
						l.fig.FirstErr = err.Error()
					}
					l.mu.Unlock()
					select {
					case <-stop:
						return
					case <-time.After(failurePause):
					}
					continue
				}
				l.ok.Add(1)
			}
		})
	}
	return l
}

func (l *httpLoad) get(ctx context.Context, msg string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.api.URL+"/echo?message="+msg, nil)
	if err != nil {
		return err
	}
	resp, err := l.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET: %s", resp.Status)
	}
	var body testserver.HTTPEchoResponse
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return err
	}
	if body.Message != msg {
		return fmt.Errorf("%w: the HTTP echo returned %q", errWrongAnswer, body.Message)
	}
	return nil
}

// wait waits for the callers (stop must be closed), stops the server and
// returns the figures.
func (l *httpLoad) wait() *httpFigures {
	l.wg.Wait()
	l.api.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.fig
	f.OK, f.Failed, f.Rejected = l.ok.Load(), l.failed.Load(), l.reject.Load()
	f.Requests = f.OK + f.Failed
	return &f
}

type codeRecorder struct {
	http.ResponseWriter
	code int
}

func (c *codeRecorder) WriteHeader(code int) {
	c.code = code
	c.ResponseWriter.WriteHeader(code)
}
