// Package policy owns what an operator decides about reboots beyond the lock itself:
// the configuration file (slots, reboot windows and the minimum gap per group, the
// post-reboot health gate, stale holders, blockers), the pause switches, and the Gate
// that the lock asks before a node that holds nothing may take a slot.
//
// The Gate refuses a new grant, never a current holder, with an error that names its
// reason (Refusal, which maps to a FleetLock reply kind). It reads only caches and the
// last result of background probes, so that asking it costs no request.
//
// docs/operations.md describes the file, the switches and the reasons for operators.
package policy
