//go:build rebootmanager_unsafe_replace

package policy

// A test-only build (tag rebootmanager_unsafe_replace) accepts any replaceAfter, so
// that end-to-end tests replace a node in seconds.
func init() { minReplaceAfter = 0 }
