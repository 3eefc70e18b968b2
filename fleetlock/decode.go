package fleetlock

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
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

var groupPattern = regexp.MustCompile(GroupPattern)

// ValidGroup reports whether group is a FleetLock group name: it matches GroupPattern
// and has at most MaxGroupBytes bytes. Every place that accepts a group name (the
// request body, the policy file, the credentials file, the flags) uses it.
func ValidGroup(group string) bool {
	return len(group) <= MaxGroupBytes && groupPattern.MatchString(group)
}

// invalid returns an invalid_request error naming the offending field.
func invalid(field, format string, args ...any) error {
	return &detail{errInvalidRequest, field + ": " + fmt.Sprintf(format, args...)}
}

// checkHeader requires exactly one fleet-lock-protocol header whose value,
// trimmed of spaces and tabs, is "true" in any case.
func checkHeader(h http.Header) error {
	v := h.Values(ProtocolHeader)
	if len(v) != 1 || !strings.EqualFold(strings.Trim(v[0], " \t"), "true") {
		return invalid(ProtocolHeader+" header", `must be present once and be "true"`)
	}
	return nil
}

// readBody reads at most limit bytes of body; more is errBodyTooLarge.
func readBody(body io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return nil, invalid("body", "read failed: %v", err)
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
	case !groupPattern.MatchString(p.Group):
		return invalid("client_params.group", "must match %s", groupPattern)
	}
	return nil
}
