package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// doTimeout bounds one command of Do: setting up a topology sends only
// commands that a live server answers at once.
const doTimeout = 5 * time.Second

// Error is an error reply of the server ("-ERR ...", "-READONLY ...").
type Error string

func (e Error) Error() string { return "redis: " + string(e) }

// HasPrefix reports whether the reply starts with the error code p.
func (e Error) HasPrefix(p string) bool { return strings.HasPrefix(string(e), p) }

// Do sends one command on a new connection (the unix socket when the server
// has one, its TCP address otherwise; AUTH first when it has a password) and
// returns the reply: a string for simple strings and bulk strings, int64 for
// integers, nil for a null, []any for arrays, and an error of type Error for
// an error reply. It is meant for setting up and inspecting servers, not for
// load: every call dials.
func (s *Server) Do(args ...string) (any, error) {
	return s.do(doTimeout, args...)
}

func (s *Server) do(timeout time.Duration, args ...string) (any, error) {
	network, addr := "unix", s.Socket
	if addr == "" {
		network, addr = "tcp", s.Addr
	}
	c, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	r := bufio.NewReader(c)
	if s.Password != "" {
		if _, err := roundTrip(c, r, "AUTH", s.Password); err != nil {
			return nil, err
		}
	}
	return roundTrip(c, r, args...)
}

// String is Do for a command whose reply is a string (INFO, CLUSTER NODES).
func (s *Server) String(args ...string) (string, error) {
	v, err := s.Do(args...)
	if err != nil {
		return "", err
	}
	str, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("redistest: %s answered %T, not a string", args[0], v)
	}
	return str, nil
}

// Info returns the fields of INFO section as a map ("role" → "master").
func (s *Server) Info(section string) (map[string]string, error) {
	text, err := s.String("INFO", section)
	if err != nil {
		return nil, err
	}
	m := make(map[string]string)
	for line := range strings.Lines(text) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && !strings.HasPrefix(k, "#") {
			m[k] = v
		}
	}
	return m, nil
}

func roundTrip(w io.Writer, r *bufio.Reader, args ...string) (any, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return nil, err
	}
	return readReply(r)
}

// readReply reads one RESP2 reply.
func readReply(r *bufio.Reader) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("redistest: empty reply line")
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return nil, Error(body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		out := make([]any, n)
		for i := range out {
			// An error inside an array is a value, not a failure.
			v, err := readReply(r)
			var rerr Error
			if err != nil && !errors.As(err, &rerr) {
				return nil, err
			}
			if err != nil {
				v = rerr
			}
			out[i] = v
		}
		return out, nil
	}
	return nil, fmt.Errorf("redistest: unexpected reply %q", line)
}
