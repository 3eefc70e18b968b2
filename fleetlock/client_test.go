package fleetlock

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// captureOne accepts one connection, returns its raw request and answers 200.
func captureOne(t *testing.T) (addr string, raw <-chan string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	out := make(chan string, 1)
	go func() {
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			out <- err.Error()
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		var head strings.Builder
		n := 0
		for {
			line, err := br.ReadString('\n')
			head.WriteString(line)
			if v, ok := strings.CutPrefix(line, "Content-Length: "); ok {
				n, _ = strconv.Atoi(strings.TrimSpace(v))
			}
			if err != nil || line == "\r\n" {
				break
			}
		}
		body := make([]byte, n)
		_, _ = io.ReadFull(br, body)
		reply := `{"kind":"lock_granted","value":"ok"}`
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(reply), reply)
		out <- head.String() + string(body)
	}()
	return ln.Addr().String(), out
}

// TestClientWire: the request is what Zincati sends, byte for byte but for the
// case and order of Go's own Host and Content-Length lines.
func TestClientWire(t *testing.T) {
	addr, raw := captureOne(t)
	c := &Client{BaseURL: "http://" + addr + "/base/"}
	resp, err := c.PreReboot(t.Context(), ClientParams{ID: testID, Group: "default"})
	require.NoError(t, err)
	assert.Equal(t, Response{200, Reply{KindLockGranted, "ok"}}, resp)
	want := "POST /base/v1/pre-reboot HTTP/1.1\r\n" +
		"Host: " + addr + "\r\n" +
		"Content-Length: " + strconv.Itoa(len(validBody)) + "\r\n" +
		"accept: */*\r\n" +
		"fleet-lock-protocol: true\r\n" +
		"\r\n" + validBody
	assert.Equal(t, want, <-raw)
}

// TestClientWireBasicAuth: credentials from BaseURL go on the wire as
// Zincati's hyper writes them (lower-case name), and not in the request line.
func TestClientWireBasicAuth(t *testing.T) {
	addr, raw := captureOne(t)
	c := &Client{BaseURL: "http://zincati:p%40ss@" + addr + "/"}
	_, err := c.PreReboot(t.Context(), ClientParams{ID: testID, Group: "default"})
	require.NoError(t, err)
	want := "POST /v1/pre-reboot HTTP/1.1\r\n" +
		"Host: " + addr + "\r\n" +
		"Content-Length: " + strconv.Itoa(len(validBody)) + "\r\n" +
		"accept: */*\r\n" +
		"authorization: Basic emluY2F0aTpwQHNz\r\n" + // base64("zincati:p@ss")
		"fleet-lock-protocol: true\r\n" +
		"\r\n" + validBody
	assert.Equal(t, want, <-raw)
}

// TestClientHeaders checks what a Go server sees from the Client.
func TestClientHeaders(t *testing.T) {
	var got *http.Request
	var body []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		body, _ = io.ReadAll(r.Body)
		w.WriteHeader(http.StatusConflict)
		_, _ = io.WriteString(w, `{"kind":"lock_held","value":"node b"}`)
	}))
	defer srv.Close()
	resp, err := (&Client{BaseURL: srv.URL}).SteadyState(t.Context(), ClientParams{ID: "a<&>b", Group: "g"})
	require.NoError(t, err)
	assert.Equal(t, Response{409, Reply{KindLockHeld, "node b"}}, resp)
	assert.False(t, resp.OK())
	assert.Equal(t, "POST", got.Method)
	assert.Equal(t, "/v1/steady-state", got.URL.Path)
	assert.Equal(t, http.Header{"Fleet-Lock-Protocol": {"true"}, "Accept": {"*/*"}, "Content-Length": {"64"}}, got.Header)
	assert.Equal(t, "{\n  \"client_params\": {\n    \"id\": \"a<&>b\",\n    \"group\": \"g\"\n  }\n}", string(body))
}

func TestEndpointURL(t *testing.T) {
	tests := []struct{ base, want string }{
		{"http://h/base/", "http://h/base/v1/pre-reboot"},
		{"http://h/base", "http://h/v1/pre-reboot"},
		{"http://h", "http://h/v1/pre-reboot"},
		{"http://h/", "http://h/v1/pre-reboot"},
		{"https://h:8443/a/b/", "https://h:8443/a/b/v1/pre-reboot"},
		{"http://h/a/b", "http://h/a/v1/pre-reboot"},
		{"http://h/base/?q=1", "http://h/base/v1/pre-reboot"},
		{"https://u:p@h/base/", "https://h/base/v1/pre-reboot"},
		{"http://@h/", "http://h/v1/pre-reboot"},
	}
	for _, tt := range tests {
		got, _, err := endpointURL(tt.base, "v1/pre-reboot")
		require.NoError(t, err, tt.base)
		assert.Equal(t, tt.want, got.String(), tt.base)
	}
	for _, bad := range []string{"", "h/base/", "ftp://h/", "http://", "http://h/%zz", ":", "ftp://u:secret@h/", "http://u:secret@h/%zz"} {
		_, _, err := endpointURL(bad, "v1/pre-reboot")
		if assert.Error(t, err, bad) {
			assert.NotContains(t, err.Error(), "secret", "the password stays out of errors")
		}
	}
}

// TestClientBasicAuth: user:password@ in BaseURL is sent as Basic credentials,
// percent-decoded, as Zincati's reqwest does, and never shows in errors.
func TestClientBasicAuth(t *testing.T) {
	type seen struct {
		user, pass string
		ok         bool
		authLines  int
		uri        string
	}
	got := make(chan seen, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		got <- seen{u, p, ok, len(r.Header.Values("Authorization")), r.RequestURI}
		_, _ = io.WriteString(w, `{"kind":"lock_granted","value":"ok"}`)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	for _, tt := range []struct {
		base string
		want seen
	}{
		{"http://node:p%40ss%3Aw0rd@" + host + "/fl/", seen{"node", "p@ss:w0rd", true, 1, "/fl/v1/pre-reboot"}},
		{"http://node@" + host + "/", seen{"node", "", true, 1, "/v1/pre-reboot"}},
		{"http://:only-password@" + host + "/", seen{"", "only-password", true, 1, "/v1/pre-reboot"}},
		{"http://@" + host + "/", seen{"", "", false, 0, "/v1/pre-reboot"}},
		{"http://" + host + "/", seen{"", "", false, 0, "/v1/pre-reboot"}},
	} {
		resp, err := (&Client{BaseURL: tt.base}).PreReboot(t.Context(), ClientParams{"a", "g"})
		require.NoError(t, err, tt.base)
		assert.True(t, resp.OK(), tt.base)
		assert.Equal(t, tt.want, <-got, tt.base)
	}

	// The Client against the handler: the Locker sees the credentials in the Peer.
	var peer Peer
	h := httptest.NewServer(NewHandler(peerLocker{&peer}, Options{}))
	defer h.Close()
	resp, err := (&Client{BaseURL: "http://zincati:s3cret@" + strings.TrimPrefix(h.URL, "http://") + "/"}).PreReboot(t.Context(), ClientParams{"a", "g"})
	require.NoError(t, err)
	assert.True(t, resp.OK())
	assert.True(t, peer.HasBasicAuth)
	assert.Equal(t, "zincati", peer.Username)
	assert.Equal(t, "s3cret", peer.Password)

	// A connection error names the URL without the password.
	_, err = (&Client{BaseURL: "http://zincati:s3cret@127.0.0.1:1/"}).PreReboot(t.Context(), ClientParams{"a", "g"})
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "s3cret")
	assert.Contains(t, err.Error(), "127.0.0.1:1")
}

// peerLocker grants everything and records the Peer of the last call.
type peerLocker struct{ peer *Peer }

func (l peerLocker) PreReboot(ctx context.Context, _ ClientParams) error {
	*l.peer, _ = PeerFrom(ctx)
	return nil
}

func (l peerLocker) SteadyState(ctx context.Context, p ClientParams) (bool, error) {
	return false, l.PreReboot(ctx, p)
}

func TestClientResponses(t *testing.T) {
	tests := []struct {
		status int
		body   string
		want   Reply
		ok     bool
	}{
		{200, `{"kind":"lock_granted","value":"go"}`, Reply{KindLockGranted, "go"}, true},
		{204, ``, Reply{}, true},
		{503, `{"kind":"api_unavailable","value":"later"}`, Reply{KindAPIUnavailable, "later"}, false},
		{502, `<html>bad gateway</html>`, Reply{Value: "<html>bad gateway</html>"}, false},
		{409, `{"value":"no kind"}`, Reply{Value: `{"value":"no kind"}`}, false},
	}
	for _, tt := range tests {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(tt.status)
			_, _ = io.WriteString(w, tt.body)
		}))
		resp, err := (&Client{BaseURL: srv.URL, HTTPClient: srv.Client()}).PreReboot(t.Context(), ClientParams{"a", "g"})
		srv.Close()
		require.NoError(t, err)
		assert.Equal(t, Response{tt.status, tt.want}, resp)
		assert.Equal(t, tt.ok, resp.OK())
	}
}

func TestClientErrors(t *testing.T) {
	_, err := (&Client{BaseURL: "not a url"}).PreReboot(t.Context(), ClientParams{"a", "g"})
	assert.ErrorContains(t, err, "base URL")
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	_, err = (&Client{BaseURL: srv.URL}).PreReboot(t.Context(), ClientParams{"a", "g"})
	assert.ErrorContains(t, err, "POST "+srv.URL+"/v1/pre-reboot")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = (&Client{BaseURL: "http://127.0.0.1:1/"}).SteadyState(ctx, ClientParams{"a", "g"})
	assert.ErrorIs(t, err, context.Canceled)
}

// TestClientAgainstHandler pins the base URL rule end to end.
func TestClientAgainstHandler(t *testing.T) {
	l := &stubLocker{released: true}
	srv := httptest.NewServer(NewHandler(l, Options{PathPrefix: "/fleetlock"}))
	defer srv.Close()
	p := ClientParams{ID: testID, Group: "default"}
	ctx := t.Context()

	resp, err := (&Client{BaseURL: srv.URL + "/fleetlock/"}).PreReboot(ctx, p)
	require.NoError(t, err)
	assert.Equal(t, Response{200, Reply{KindLockGranted, "reboot lock granted: reboot now"}}, resp)
	assert.Equal(t, p, l.got)

	resp, err = (&Client{BaseURL: srv.URL + "/fleetlock/"}).SteadyState(ctx, p)
	require.NoError(t, err)
	assert.Equal(t, KindLockReleased, resp.Reply.Kind)

	resp, err = (&Client{BaseURL: srv.URL + "/fleetlock"}).PreReboot(ctx, p)
	require.NoError(t, err)
	assert.Equal(t, 404, resp.StatusCode, "no trailing slash drops the prefix")
	assert.Equal(t, KindNotFound, resp.Reply.Kind)
	assert.Equal(t, 2, l.calls)
}
