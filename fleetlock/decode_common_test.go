package fleetlock

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// commonBodies are bodies near the shapes decodeCommon accepts.
var commonBodies = []string{
	validBody,
	`{"client_params":{"id":"a","group":"g"}}`,
	`{"client_params":{"group":"g","id":"a"}}`,
	" \t\r\n{ \"client_params\" : { \"id\" : \"a\" , \"group\" : \"g\" } } \n",
	`{"client_params":{"id":"","group":"g"}}`,
	`{"client_params":{"id":"a","group":""}}`,
	`{"client_params":{"id":"a","group":"g_h"}}`,
	`{"client_params":{"id":"a"}}`,
	`{"client_params":{"group":"g"}}`,
	`{"client_params":{}}`,
	`{"client_params":{"id":"a","group":"g","id":"b"}}`,
	`{"client_params":{"id":"a","group":"g","x":1}}`,
	`{"client_params":{"id":"a","group":"g"},"x":1}`,
	`{"client_params":{"id":"a","group":"g"},"client_params":{"id":"b","group":"g"}}`,
	`{"client_params":{"id":"a","group":"g"}}{}`,
	`{"client_params":{"id":"a","group":"g"}}x`,
	`{"client_params":{"id":"a","group":"g"}`,
	`{"client_params":{"id":"a","group":"g",}}`,
	`{"client_params":{"id":"a\u0062","group":"g"}}`,
	`{"client_params":{"id":"a\"b","group":"g"}}`,
	`{"client_params":{"id":"é","group":"g"}}`,
	`{"client_params":{"id":1,"group":"g"}}`,
	`{"ID":{"id":"a","group":"g"}}`,
	`{"client_params":{"ID":"a","group":"g"}}`,
	"{\"client_params\":{\"id\":\"a\x01\",\"group\":\"g\"}}",
	"{\"client_params\":{\"id\":\"a\",\"group\":\"g\"}}\x00",
	`{"client_params":{"id":"a","group":"g"}} {"x":1}`,
	`[]`, `""`, `{`, ``,
}

// TestDecodeCommonAgrees: for every body decodeCommon accepts, the full decoder
// returns the same params and the same error.
func TestDecodeCommonAgrees(t *testing.T) {
	accepted := 0
	for _, b := range commonBodies {
		if checkDecodeCommon(t, []byte(b)) {
			accepted++
		}
	}
	assert.Equal(t, 7, accepted, "bodies taking the short way")
	// The bodies of the handler's fuzz corpus, too.
	files, err := filepath.Glob("testdata/fuzz/FuzzHandler/*")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		text, err := os.ReadFile(f)
		require.NoError(t, err)
		lines := strings.Split(string(text), "\n")
		require.True(t, len(lines) > 1 && strings.HasPrefix(lines[1], "[]byte("), f)
		b, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
		require.NoError(t, err, f)
		checkDecodeCommon(t, []byte(b))
	}
}

func checkDecodeCommon(t *testing.T, b []byte) bool {
	t.Helper()
	p, ok := decodeCommon(b)
	if !ok {
		return false
	}
	want, wantErr := decodeAny(b)
	err := validate(p)
	if p != want || (err == nil) != (wantErr == nil) || (err != nil && err.Error() != wantErr.Error()) {
		t.Errorf("body %q: decodeCommon %+v, %v; decodeAny %+v, %v", b, p, err, want, wantErr)
	}
	return true
}

// FuzzDecodeCommon: decodeCommon never disagrees with the full decoder.
func FuzzDecodeCommon(f *testing.F) {
	for _, b := range commonBodies {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkDecodeCommon(t, b) })
}
