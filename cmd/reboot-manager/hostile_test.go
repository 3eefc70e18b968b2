package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
)

// The server's limits hold against hostile clients: oversized headers, request
// smuggling, a slow client (slowloris), and thousands of idle connections, none of
// which keeps a real request from being answered.
func TestHostileClients(t *testing.T) {
	env := controlplane.Shared(t)
	s := startServer(t, env.Kubeconfig)
	u, err := url.Parse(s.FleetLock)
	require.NoError(t, err)
	addr := u.Host
	body := `{"client_params":{"id":"0123456789abcdef0123456789abcdef","group":"default"}}`
	raw := func(t *testing.T, req string) string {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = io.WriteString(c, req)
		require.NoError(t, err)
		line, err := bufio.NewReader(c).ReadString('\n')
		require.NoError(t, err)
		return line
	}

	t.Run("oversized headers", func(t *testing.T) {
		big := strings.Repeat("x", 64<<10)
		status := raw(t, "POST /v1/steady-state HTTP/1.1\r\nHost: h\r\nfleet-lock-protocol: true\r\nX-Big: "+big+"\r\n\r\n")
		assert.Contains(t, status, "431")
	})

	t.Run("request smuggling", func(t *testing.T) {
		status := raw(t, fmt.Sprintf("POST /v1/pre-reboot HTTP/1.1\r\nHost: h\r\nfleet-lock-protocol: true\r\n"+
			"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n%s", len(body), body))
		assert.Contains(t, status, "400", "Content-Length with Transfer-Encoding is refused")
	})

	t.Run("thousands of idle connections and a slowloris", func(t *testing.T) {
		raiseFileLimit(t, 8192)
		var conns []net.Conn
		t.Cleanup(func() {
			for _, c := range conns {
				c.Close()
			}
		})
		for range 3000 {
			c, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			conns = append(conns, c)
		}
		slow := conns[0]
		_, err := io.WriteString(slow, "POST /v1/pre-reboot HTTP/1.1\r\nHost: h\r\n") // never finishes its headers
		require.NoError(t, err)

		start := time.Now()
		c := fleetlock.Client{BaseURL: s.FleetLock}
		resp, err := c.SteadyState(t.Context(), fleetlock.ClientParams{ID: "0123456789abcdef0123456789abcdef", Group: "default"})
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Less(t, time.Since(start), 2*time.Second, "a real request is answered beside 3000 idle connections")

		// The slow client is cut off once the header timeout passes.
		_ = slow.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err = io.ReadAll(slow)
		require.NoError(t, err, "the server closed the connection")
		assert.Less(t, time.Since(start), 15*time.Second, "cut off after the 10s header timeout")
	})
}

func raiseFileLimit(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
	if lim.Cur < n {
		lim.Cur = min(n, lim.Max)
		require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim))
	}
	require.GreaterOrEqual(t, lim.Cur, n, "the test needs %d open files", n)
}
