package fleetlock

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"strings"
	"unicode/utf8"
)

const (
	// ProtocolHeader is the header every FleetLock request must carry, set to "true".
	ProtocolHeader = "fleet-lock-protocol"
	// MaxIDBytes bounds client_params.id.
	MaxIDBytes = 256
	// MaxGroupBytes bounds client_params.group.
	MaxGroupBytes = 253
)

// GroupPattern is the form of a FleetLock group, as Zincati validates it: ASCII
// letters, digits, dots and dashes.
const GroupPattern = `^[a-zA-Z0-9.-]+$`

// ValidGroup reports whether group is a FleetLock group name: it matches GroupPattern
// and has at most MaxGroupBytes bytes. Every place that accepts a group name (the
// request body, the policy file, the credentials file, the flags) uses it. It checks
// the bytes itself, without a regexp: it runs on every request.
func ValidGroup(group string) bool {
	if group == "" || len(group) > MaxGroupBytes {
		return false
	}
	for i := 0; i < len(group); i++ {
		c := group[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// invalid returns an invalid_request error naming the offending field.
func invalid(field, format string, args ...any) error {
	return &detail{errInvalidRequest, field + ": " + fmt.Sprintf(format, args...)}
}

// checkHeader requires exactly one fleet-lock-protocol header whose value,
// trimmed of spaces and tabs, is "true" in any case.
func checkHeader(h http.Header) error {
	v := h[protocolHeaderKey] // as h.Values(ProtocolHeader) finds it, without canonicalizing the name each time
	if len(v) != 1 || !strings.EqualFold(strings.Trim(v[0], " \t"), "true") {
		return invalid(ProtocolHeader+" header", `must be present once and be "true"`)
	}
	return nil
}

// protocolHeaderKey is ProtocolHeader's canonical form, a key of http.Header.
var protocolHeaderKey = textproto.CanonicalMIMEHeaderKey(ProtocolHeader)

// readBody reads at most limit bytes of body into buf's array (growing it if
// needed); more is errBodyTooLarge.
func readBody(body io.Reader, limit int64, buf []byte) ([]byte, error) {
	b := buf[:0]
	for int64(len(b)) <= limit {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := body.Read(b[len(b):int(min(int64(cap(b)), limit+1))])
		b = b[:len(b)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, invalid("body", "read failed: %v", err)
		}
	}
	if int64(len(b)) > limit {
		return nil, &detail{errBodyTooLarge, fmt.Sprintf("request body larger than %d bytes", limit)}
	}
	return b, nil
}

// decodeRequest strictly decodes and validates a FleetLock body: valid UTF-8,
// exactly one JSON object, keys matched case-sensitively, no duplicate keys in
// the object or in client_params, unknown keys ignored.
func decodeRequest(b []byte) (ClientParams, error) {
	if p, ok := decodeCommon(b); ok {
		return p, validate(p)
	}
	return decodeAny(b)
}

// decodeCommon decodes, without encoding/json, the bodies Zincati sends: one object
// whose only key is "client_params", an object whose keys are "id" and "group", once
// each, in any order; every key and value a string of printable ASCII without
// escapes; JSON whitespace between tokens. ok is false for every other body, even
// a valid one: decodeAny decides those. For a body it accepts, decodeAny would
// return the same params (FuzzDecodeCommon checks it).
func decodeCommon(b []byte) (p ClientParams, ok bool) {
	i, ok := expect(b, 0, '{')
	if !ok {
		return p, false
	}
	key, i, ok := scanString(b, i)
	if !ok || string(key) != "client_params" {
		return p, false
	}
	if i, ok = expect(b, i, ':'); !ok {
		return p, false
	}
	if i, ok = expect(b, i, '{'); !ok {
		return p, false
	}
	var id, group []byte
	for {
		var v []byte
		if key, i, ok = scanString(b, i); !ok {
			return p, false
		}
		if i, ok = expect(b, i, ':'); !ok {
			return p, false
		}
		if v, i, ok = scanString(b, i); !ok {
			return p, false
		}
		switch {
		case string(key) == "id" && id == nil:
			id = v
		case string(key) == "group" && group == nil:
			group = v
		default: // another key, or a duplicate one
			return p, false
		}
		if i, ok = expect(b, i, ','); !ok {
			break
		}
	}
	if i, ok = expect(b, i, '}'); !ok {
		return p, false
	}
	if i, ok = expect(b, i, '}'); !ok {
		return p, false
	}
	if id == nil || group == nil || skipSpace(b, i) != len(b) {
		return p, false
	}
	return ClientParams{ID: string(id), Group: string(group)}, true
}

// skipSpace returns the index of the first byte of b at or after i that is not
// JSON whitespace.
func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// expect skips whitespace and the byte c at i, returning the index after c.
func expect(b []byte, i int, c byte) (int, bool) {
	i = skipSpace(b, i)
	if i < len(b) && b[i] == c {
		return i + 1, true
	}
	return i, false
}

// scanString skips whitespace and one JSON string of printable ASCII without
// escapes, returning its contents (a non-nil slice of b) and the index after it.
func scanString(b []byte, i int) (s []byte, next int, ok bool) {
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != '"' {
		return nil, i, false
	}
	start := i + 1
	for j := start; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[start:j:j], j + 1, true
		case c < 0x20 || c == '\\' || c >= 0x80:
			return nil, j, false
		}
	}
	return nil, len(b), false
}

// decodeAny is decodeRequest for any body, with encoding/json.
func decodeAny(b []byte) (ClientParams, error) {
	var p ClientParams
	if !utf8.Valid(b) {
		return p, invalid("body", "must be valid UTF-8")
	}
	d := json.NewDecoder(bytes.NewReader(b))
	seen := false
	err := decodeObject(d, "body", func(key string) error {
		if key != "client_params" {
			return skipValue(d, key)
		}
		seen = true
		return decodeParams(d, &p)
	})
	if err != nil {
		return p, err
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return p, invalid("body", "must hold exactly one JSON object")
	}
	if !seen {
		return p, invalid("client_params", "required")
	}
	return p, validate(p)
}

// decodeParams decodes the client_params object into p.
func decodeParams(d *json.Decoder, p *ClientParams) error {
	return decodeObject(d, "client_params", func(key string) error {
		switch key {
		case "id":
			return decodeString(d, "client_params.id", &p.ID)
		case "group":
			return decodeString(d, "client_params.group", &p.Group)
		}
		return skipValue(d, "client_params."+key)
	})
}

// decodeObject reads one JSON object, calling field for each key, which must
// consume the value. Duplicate keys are rejected.
func decodeObject(d *json.Decoder, name string, field func(key string) error) error {
	if t, err := d.Token(); err != nil || t != json.Delim('{') {
		return invalid(name, "must be a JSON object")
	}
	keys := map[string]bool{}
	for d.More() {
		t, err := d.Token()
		key, ok := t.(string)
		if err != nil || !ok {
			return invalid(name, "malformed JSON object")
		}
		if keys[key] {
			return invalid(name, "duplicate key %q", key)
		}
		keys[key] = true
		if err := field(key); err != nil {
			return err
		}
	}
	if _, err := d.Token(); err != nil {
		return invalid(name, "malformed JSON object")
	}
	return nil
}

// decodeString reads one JSON string value into s.
func decodeString(d *json.Decoder, name string, s *string) error {
	t, err := d.Token()
	v, ok := t.(string)
	if err != nil || !ok {
		return invalid(name, "must be a string")
	}
	*s = v
	return nil
}

// skipValue consumes and discards one well-formed JSON value.
func skipValue(d *json.Decoder, name string) error {
	var raw json.RawMessage
	if err := d.Decode(&raw); err != nil {
		return invalid(name, "malformed JSON value")
	}
	return nil
}

// validate applies the field rules to decoded client params.
func validate(p ClientParams) error {
	switch {
	case p.ID == "":
		return invalid("client_params.id", "required, must not be empty")
	case len(p.ID) > MaxIDBytes:
		return invalid("client_params.id", "must be at most %d bytes", MaxIDBytes)
	case p.Group == "":
		return invalid("client_params.group", "required, must not be empty")
	case len(p.Group) > MaxGroupBytes:
		return invalid("client_params.group", "must be at most %d bytes", MaxGroupBytes)
	case !ValidGroup(p.Group):
		return invalid("client_params.group", "must match %s", GroupPattern)
	}
	return nil
}
