package access

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// FuzzGuardedHandler fuzzes the whole FleetLock front: the handler, the Guard with
// credentials and source-address verification, over a lock stub that grants every
// known node. Whatever the body, credentials, peer address and X-Forwarded-For, it
// never panics, never answers 5xx, and answers a pre-reboot 2xx only to alice with
// her password, for her group, from node-a's address.
func FuzzGuardedHandler(f *testing.F) {
	good := "{\n  \"client_params\": {\n    \"id\": \"" + idA + "\",\n    \"group\": \"workers\"\n  }\n}"
	f.Add(good, "alice", "a", true, "10.0.0.5:1234", "")
	f.Add(good, "alice", "b", true, "10.0.0.5:1234", "")
	f.Add(good, "alice", "a", true, "10.9.9.9:1234", "10.0.0.5")
	f.Add(good, "alice", "a", true, "127.0.0.1:1", "10.0.0.5, 127.0.0.1")
	f.Add(strings.Replace(good, "workers", "infra", 1), "alice", "a", true, "10.0.0.5:1", "")
	f.Add(`{"client_params":{"id":"`+idB+`","group":"workers"}}`, "", "", false, "10.0.0.6:1", "")
	f.Add("{", "alice", "a", true, "[::1]:2", "::ffff:10.0.0.5")
	nodes := stubNodes{idA: node("node-a", "10.0.0.5", "2001:db8::5"), idB: node("node-b", "10.0.0.6")}
	path := filepath.Join(f.TempDir(), "credentials")
	if err := os.WriteFile(path, []byte("workers:alice:"+hash(f, "a")+":*\n"), 0o600); err != nil {
		f.Fatal(err)
	}
	creds, err := LoadCredentialsFile(path, ReloadOptions{})
	if err != nil {
		f.Fatal(err)
	}
	proxies, err := ParseTrustedProxies("127.0.0.0/8")
	if err != nil {
		f.Fatal(err)
	}
	h := fleetlock.NewHandler(NewGuard(&stubLock{nodes: nodes, releasedOnSteady: true}, Options{
		Credentials: creds, Nodes: nodes, TrustedProxies: proxies,
	}), fleetlock.Options{})
	f.Fuzz(func(t *testing.T, body, user, pass string, auth bool, remote, xff string) {
		for _, path := range []string{"/v1/pre-reboot", "/v1/steady-state"} {
			r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
			r.RemoteAddr = remote
			r.Header.Set(fleetlock.ProtocolHeader, "true")
			if auth {
				r.SetBasicAuth(user, pass)
			}
			if xff != "" {
				r.Header.Set("X-Forwarded-For", xff)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			if rec.Code >= 500 {
				t.Fatalf("%s: %d %s", path, rec.Code, rec.Body)
			}
			if rec.Code/100 == 2 && path == "/v1/pre-reboot" &&
				(!auth || user != "alice" || pass != "a" || !strings.Contains(body, idA) || !strings.Contains(body, "workers")) {
				t.Fatalf("pre-reboot granted to user %q from %q (xff %q), body %q", user, remote, xff, body)
			}
		}
	})
}
