package fleetlock

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzHandler: the handler never panics, never answers 5xx, and answers 2xx
// only to a valid request that the Locker granted.
func FuzzHandler(f *testing.F) {
	for _, body := range []string{
		validBody, `{}`, `null`, validBody + `{}`,
		`{"client_params":{"id":"a","group":"g","id":"b"}}`,
		`{"client_params":{"ID":"a","group":"g"}}`,
		`{"client_params":{"id":"a\ud800","group":"g.1-x"},"x":[{}]}`,
	} {
		f.Add([]byte(body), "true", true)
		f.Add([]byte(body), " True", false)
	}
	f.Fuzz(func(t *testing.T, body []byte, header string, grant bool) {
		l := &stubLocker{}
		if !grant {
			l.err = ErrLockHeld
		}
		hdr := http.Header{"Fleet-Lock-Protocol": {header}}
		rec := serve(NewHandler(l, Options{}), http.MethodPost, "/v1/pre-reboot", hdr, string(body))
		if rec.Code >= 500 {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		var rep Reply
		if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil || rep.Kind == "" || rep.Value == "" {
			t.Fatalf("bad reply %q: %v", rec.Body, err)
		}
		if l.calls > 1 {
			t.Fatalf("Locker called %d times", l.calls)
		}
		if rec.Code < 200 || rec.Code >= 300 {
			return
		}
		want, ok := referenceDecode(body, header)
		if !ok || !grant || l.calls != 1 || l.got != want {
			t.Fatalf("2xx for body %q header %q grant %v: reference %v %+v, locker got %+v", body, header, grant, ok, want, l.got)
		}
	})
}

// referenceDecode is an independent, looser check of a request: what the
// handler accepts must pass it and decode to the same params.
func referenceDecode(body []byte, header string) (ClientParams, bool) {
	var top map[string]json.RawMessage
	var inner map[string]json.RawMessage
	var p ClientParams
	ok := strings.EqualFold(strings.TrimSpace(header), "true") && utf8.Valid(body) &&
		len(body) <= 4096 &&
		json.Unmarshal(body, &top) == nil &&
		json.Unmarshal(top["client_params"], &inner) == nil &&
		json.Unmarshal(inner["id"], &p.ID) == nil &&
		json.Unmarshal(inner["group"], &p.Group) == nil &&
		p.ID != "" && len(p.ID) <= MaxIDBytes && p.Group != "" && len(p.Group) <= MaxGroupBytes &&
		strings.Trim(p.Group, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") == ""
	return p, ok
}
