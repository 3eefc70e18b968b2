package policy

import (
	"time"

	"github.com/reboot-manager/reboot-manager/internal/reload"
)

// File is a policy file (ParseFile), reloaded when it changes: a changed version is
// taken in once two consecutive checks read the same contents (so a file read while
// it is rewritten in place is never taken half-written), and an unreadable or
// invalid one leaves the last valid version in force, logged once and shown by State.
type File struct {
	path string
	r    *reload.Files[*Config]
}

// LoadFile reads and parses the policy file at path; an invalid file is an error
// naming the file and the field. opts.RequireStable is always set.
func LoadFile(path string, opts reload.Options) (*File, error) {
	opts.RequireStable = true
	r, err := reload.NewFile("policy file", path, ParseFile, opts)
	if err != nil {
		return nil, err
	}
	return &File{path: path, r: r}, nil
}

// Config returns the policy in force, checking the file first when a check is due.
func (f *File) Config() *Config { return f.r.Get() }

// State says which version of the file is in force, and why the file as it is now
// is not, if it is not.
func (f *File) State() ConfigState {
	st := f.r.State()
	s := ConfigState{Source: f.path, Loaded: st.Loaded, Checked: st.Checked, Failures: st.Failures}
	if st.Err != nil {
		s.Error, s.ErrorSince = st.Err.Error(), st.ErrSince
	}
	return s
}

// ConfigState is where the policy in force comes from and whether its source, as it
// is now, is what is in force.
type ConfigState struct {
	// Source is the policy file's path, ConfigMap or "flags" (--default-slots and
	// --group-slots, never reloaded).
	Source string `json:"source"`
	// Loaded is when the version in force was read; zero for flags.
	Loaded time.Time `json:"loaded,omitzero"`
	// Checked is when the source was last read; zero for flags.
	Checked time.Time `json:"checked,omitzero"`
	// Error says why the source, as it was last read, is not in force: the last
	// valid version is. Empty when it is in force.
	Error string `json:"error,omitempty"`
	// ErrorSince is when Error was first seen.
	ErrorSince time.Time `json:"errorSince,omitzero"`
	// Failures counts the failed versions since the start: each new unreadable or
	// invalid version counts once, however many checks see it.
	Failures uint64 `json:"failures"`
}
