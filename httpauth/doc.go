// Package httpauth puts the token of a token source on the requests of an
// http.Client and makes its expiry invisible, as package interceptor does
// for gRPC: a request the server answers with 401 waits for the one shared
// refresh and is sent once more with the new token.
//
// The token source is normally the *tokensource.Source that gRPC
// connections use too: an http.Client and a gRPC connection on one Source
// share its token and its refreshes, so a token the servers reject costs
// one refresh between them, whichever transport met the rejection first.
//
//	src := tokensource.New(refresher)
//	defer src.Close()
//	conn, err := grpc.NewClient(target, append(opts, interceptor.DialOptions(src)...)...)
//	client := &http.Client{Transport: httpauth.NewTransport(src, nil)}
//
// # Challenges
//
// A resource server says why it refused a token in its WWW-Authenticate
// header (RFC 6750). The transport reads it on a 401: error="invalid_token",
// or no error code, means the token is stale (refresh and retry);
// error="insufficient_scope" and RFC 9470's
// error="insufficient_user_authentication" mean a new token of the same
// grant cannot help, so the response comes back at once, without a refresh.
// The transport never turns a response into an error (the
// http.RoundTripper contract); ChallengeError does:
//
//	resp, err := client.Do(req)
//	if err != nil {
//		return err
//	}
//	defer resp.Body.Close()
//	if err := httpauth.ChallengeError(resp); errors.Is(err, tokensource.ErrInsufficientScope) {
//		return err // names the scope the server asked for
//	}
//
// The gRPC interceptors read the same header from a call's response
// metadata and return these errors as the call's error.
//
// # Security
//
// The transport refuses to send a token to a plain http:// URL unless
// AllowInsecure is given, never modifies the request it is given (the token
// goes on a copy), adds the token to a redirected request only while the
// redirect chain stays on the first request's host and port, and never puts
// token text in an error or a log record.
//
// This package imports no gRPC.
package httpauth
