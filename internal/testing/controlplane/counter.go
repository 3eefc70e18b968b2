package controlplane

import (
	"net/http"
	"strings"
	"sync"
)

// RequestCounter counts the API requests made through a client configuration.
type RequestCounter struct {
	mu     sync.Mutex
	counts map[string]int
}

type countingTransport struct {
	next http.RoundTripper
	c    *RequestCounter
}

func (c *RequestCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return countingTransport{next: rt, c: c}
}

func (t countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.c.mu.Lock()
	t.c.counts[requestKey(req)]++
	t.c.mu.Unlock()
	return t.next.RoundTrip(req)
}

// requestKey names a request by verb and resource: "get nodes", "list nodes" (a GET of
// a collection), "watch pods", "create pods/eviction", "patch nodes".
// Other paths (/readyz, /version) are named by method and path: "GET /readyz".
func requestKey(req *http.Request) string {
	if !strings.HasPrefix(req.URL.Path, "/api/") && !strings.HasPrefix(req.URL.Path, "/apis/") {
		return req.Method + " " + req.URL.Path
	}
	// /api/v1/namespaces/ns/pods/name/eviction or /apis/g/v/nodes/name
	parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
	if len(parts) > 0 && parts[0] == "apis" && len(parts) > 2 {
		parts = parts[3:]
	} else if len(parts) > 1 {
		parts = parts[2:]
	}
	if len(parts) >= 2 && parts[0] == "namespaces" && len(parts) > 2 {
		parts = parts[2:]
	}
	resource, named := "", false
	switch len(parts) {
	case 0:
	case 1:
		resource = parts[0]
	case 2:
		resource, named = parts[0], true
	default:
		resource, named = parts[0]+"/"+parts[2], true
	}
	verb := strings.ToLower(req.Method)
	switch {
	case req.Method == http.MethodGet && req.URL.Query().Get("watch") == "true":
		verb = "watch"
	case req.Method == http.MethodGet && !named:
		verb = "list"
	case req.Method == http.MethodPost:
		verb = "create"
	case req.Method == http.MethodPut:
		verb = "update"
	}
	return verb + " " + resource
}

// Count returns how many requests matched key (e.g. "delete pods").
func (c *RequestCounter) Count(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[key]
}

// Total returns how many requests were made.
func (c *RequestCounter) Total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.counts {
		n += v
	}
	return n
}

// Snapshot returns a copy of the counts.
func (c *RequestCounter) Snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]int, len(c.counts))
	for k, v := range c.counts {
		m[k] = v
	}
	return m
}
