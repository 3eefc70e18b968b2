// Package policy owns what an operator decides about reboots beyond the lock itself:
// the configuration file (slots, reboot windows and the minimum gap per group, the
// post-reboot health gate, stale holders, blockers), the pause switches, and the Gate
// that the lock asks before a node that holds nothing may take a slot.
//
// A policy file (ParseFile, File) carries "apiVersion: rebootmanager/v1", so that an
// empty or cut-off document is invalid, never the zero policy; File takes a changed
// version in only once two checks in a row read it, and keeps the last valid version
// in force when the file cannot be read or is invalid, saying why (ConfigState).
//
// The Gate refuses a new grant, never a current holder, with an error that names its
// reason (a *lock.Refusal, which maps to a FleetLock reply kind, and whose Cause stays
// the same while the refusal's cause does). It reads only caches and the last result
// of background probes, so that asking it costs no request. A blocker whose probe has
// no clean answer (an error, a timeout, a partial answer, none yet or a stale one)
// refuses as blocker_check_failing, never as a finding. The pause ConfigMap that
// does not exist is no pause; one whose list or watch the API server refuses (403)
// reads as a pause whose reason names the missing permission, never as the last state
// the cache saw. Credentials of the alerts
// blocker come from files and never appear in what the package shows: reply values,
// Events, logs, BlockerState.
//
// docs/operations.md describes the file, the switches and the reasons for operators.
package policy
