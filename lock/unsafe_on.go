//go:build rebootmanager_unsafe_grant

package lock

// grantBeforeDrain: see unsafe_off.go. This build is for tests only.
const grantBeforeDrain = true
