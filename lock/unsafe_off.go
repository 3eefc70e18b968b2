//go:build !rebootmanager_unsafe_grant

package lock

// grantBeforeDrain breaks the lock's promise on purpose: only a test-only build
// (tag rebootmanager_unsafe_grant) sets it, to prove the end-to-end checks catch a
// server that tells a node to reboot before its pods are gone.
const grantBeforeDrain = false
