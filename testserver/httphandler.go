package testserver

import (
	"encoding/json"
	"net/http"
	"strings"
)

// HTTPHandler returns an http.Handler that accepts the access tokens of s,
// judged exactly as the gRPC services judge them (expiry by s's clock,
// revocation, ForceExpire, SetRejectAccessTokens), so that one token serves
// a gRPC connection and an http.Client together. Every request needs
// "Authorization: Bearer <access token>". An accepted one is answered with
// 200 and the JSON object {"message": <the query parameter message>, "user":
// <the token's user>}. A rejected one is answered with 401 and an RFC 6750
// challenge, `Bearer realm="testserver", error="invalid_token",
// error_description="<reason>"` (without the error for a missing header),
// with the reason that the gRPC services give as the body; neither names the
// token. Rejections are logged as for the gRPC services, with the request's
// path. The handler does not touch the gRPC counters.
func (s *Server) HTTPHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, why := httpBearer(r)
		var user string
		if why == "" {
			user, why = s.checkAccess(token)
		}
		if why != "" {
			s.logger.InfoContext(r.Context(), "access token rejected", "path", r.URL.Path, "reason", string(why))
			challenge := `Bearer realm="testserver"`
			if why != rejectNoHeader {
				challenge += `, error="invalid_token", error_description="` + string(why) + `"`
			}
			w.Header().Set("WWW-Authenticate", challenge)
			http.Error(w, messagePrefix+string(why), http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(HTTPEchoResponse{Message: r.URL.Query().Get("message"), User: user})
	})
}

// HTTPEchoResponse is the body HTTPHandler answers an accepted request with.
type HTTPEchoResponse struct {
	Message string `json:"message"`
	User    string `json:"user"`
}

// httpBearer is bearerToken for an HTTP request.
func httpBearer(r *http.Request) (string, rejection) {
	vals := r.Header.Values("Authorization")
	switch {
	case len(vals) == 0:
		return "", rejectNoHeader
	case len(vals) > 1:
		return "", rejectManyHeaders
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || token == "" {
		return "", rejectMalformed
	}
	return token, ""
}
