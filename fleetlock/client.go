package fleetlock

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// maxReplyBytes bounds how much of a reply the Client reads.
const maxReplyBytes = 64 << 10

// Client sends FleetLock requests as Zincati does: POST, headers
// "fleet-lock-protocol: true" and "accept: */*" (reqwest's default), the body
// pretty-printed with a 2-space indent, no Content-Type, no User-Agent and,
// with the default HTTPClient, no Accept-Encoding. A user:password@ in BaseURL
// is sent as HTTP Basic credentials ("authorization: Basic ..."), percent-decoded
// and removed from the URL, as Zincati's reqwest does; it never appears in errors.
type Client struct {
	// BaseURL is Zincati's base_url; endpoints are resolved against it like
	// Zincati's Url::join: "http://h/base/" gives /base/v1/..., "http://h/base"
	// gives /v1/....
	BaseURL string
	// HTTPClient sends the requests. Default nil: a client like
	// http.DefaultClient whose transport does not add "Accept-Encoding: gzip".
	HTTPClient *http.Client
}

// defaultHTTPClient is http.DefaultClient without transparent compression,
// which Zincati does not ask for.
var defaultHTTPClient = func() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DisableCompression = true
	return &http.Client{Transport: t}
}()

// Response is a FleetLock reply as received.
type Response struct {
	// StatusCode is the HTTP status.
	StatusCode int
	// Reply is the decoded body; when the body is not a JSON Reply, Kind is
	// empty and Value holds the raw body.
	Reply Reply
}

// OK reports whether the status is 2xx, which Zincati treats as success
// (on pre-reboot: reboot now).
func (r Response) OK() bool { return r.StatusCode >= 200 && r.StatusCode < 300 }

// PreReboot asks for the reboot lock.
func (c *Client) PreReboot(ctx context.Context, p ClientParams) (Response, error) {
	return c.post(ctx, "v1/pre-reboot", p)
}

// SteadyState releases the reboot lock.
func (c *Client) SteadyState(ctx context.Context, p ClientParams) (Response, error) {
	return c.post(ctx, "v1/steady-state", p)
}

// post sends one FleetLock request to the endpoint ref resolved against BaseURL.
func (c *Client) post(ctx context.Context, ref string, p ClientParams) (Response, error) {
	u, user, err := endpointURL(c.BaseURL, ref)
	if err != nil {
		return Response{}, err
	}
	body, err := requestBody(p)
	if err != nil {
		return Response{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return Response{}, fmt.Errorf("fleetlock: building request: %w", err)
	}
	// Lower-case names on the wire, as Zincati's hyper writes them.
	req.Header[ProtocolHeader] = []string{"true"}
	req.Header["accept"] = []string{"*/*"}
	if user != nil {
		pass, _ := user.Password()
		req.Header["authorization"] = []string{"Basic " + base64.StdEncoding.EncodeToString([]byte(user.Username()+":"+pass))}
	}
	req.Header.Set("User-Agent", "") // an empty value makes net/http send none
	hc := c.HTTPClient
	if hc == nil {
		hc = defaultHTTPClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return Response{}, fmt.Errorf("fleetlock: POST %s: %w", u, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBytes))
	if err != nil {
		return Response{StatusCode: resp.StatusCode}, fmt.Errorf("fleetlock: reading reply: %w", err)
	}
	out := Response{StatusCode: resp.StatusCode}
	if json.Unmarshal(raw, &out.Reply) != nil || out.Reply.Kind == "" {
		out.Reply = Reply{Value: string(raw)}
	}
	return out, nil
}

// endpointURL resolves ref against base as RFC 3986 (and Zincati's Url::join)
// do. The userinfo of base, if it names a user or a password, is returned apart
// and left out of the URL.
func endpointURL(base, ref string) (*url.URL, *url.Userinfo, error) {
	b, err := url.Parse(base)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which may hold a password
		}
		return nil, nil, fmt.Errorf("fleetlock: base URL: %w", err)
	}
	if b.Scheme != "http" && b.Scheme != "https" || b.Host == "" {
		return nil, nil, fmt.Errorf("fleetlock: base URL %q: want http(s)://host[/path]", b.Redacted())
	}
	u := b.ResolveReference(&url.URL{Path: ref})
	user := u.User
	u.User = nil
	if user != nil {
		if _, hasPassword := user.Password(); user.Username() == "" && !hasPassword {
			user = nil
		}
	}
	return u, user, nil
}

// requestBody is the request body as Zincati's serde_json::to_string_pretty writes it.
func requestBody(p ClientParams) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(Request{ClientParams: p}); err != nil {
		return nil, fmt.Errorf("fleetlock: encoding request: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
