// Package lock is the reboot lock: at most Slots nodes of a FleetLock group hold it at
// once, and it lives in Node annotations (no database; see annotations.go for the keys).
//
// A node's lock state is Ready (or no annotation), Claiming, or Rebooting (it holds the
// lock). A pre-reboot request for a node (after writing its waiting marks, waiting.go):
//
//  1. Claim: writes Claiming on its node, conditioned on the resourceVersion it read.
//  2. Check: after that write has returned, lists the claiming and holding nodes with a
//     consistent read from the API server (never the cache) and counts the others of
//     its group: H holding, L claiming with a name before its own, G claiming after.
//     H+L >= slots: it withdraws its claim (a conditioned write back to Ready) and waits
//     on the cache until a slot may be free. H+L+G >= slots: it keeps its claim and
//     checks again shortly; the later names will see it and withdraw (alphabetical
//     tie-breaking). Otherwise:
//  3. Promote: writes Rebooting and cordons the node, in one write conditioned on the
//     resourceVersion of its claim, then starts the drain and waits for it.
//
// It answers "reboot now" (nil) only when its node holds the lock and is drained, and
// "not yet" after Options.Wait otherwise. A claim lives only while a request works on
// it: a request that ends while still claiming withdraws first. A claim left by a
// crashed process is stale after Options.StaleClaimAge and anyone may remove it, with a
// conditioned write.
//
// Why no more than Slots nodes ever hold the lock: every holder wrote its claim before
// its check, and the claim stayed in place until the promotion (the promotion is
// conditioned on it). Among any Slots+1 holders, take the one whose claim was written
// last: its check came after every other one's claim, so it counted at least Slots
// others and could not promote. A removed stale claim can never be promoted, because
// the promotion is conditioned on the claim's resourceVersion. Liveness: the
// alphabetically first claimant of a group never withdraws because of claims, so
// someone always wins. docs/model/lock-requests.pml models exactly this (below). A
// reservation (reserve.go) is one more such request of the node, made by a replica on
// its behalf; the other writes on a node (waiting marks, taking a reservation) change
// no lock state and only make a pending promotion of that node fail with a 409 and
// claim again.
//
// A grant is one Node object (its UID) and one promotion: the drain is bound to the
// UID, and just before every 2xx a fresh read checks that the node still holds that
// grant, is still cordoned, and has no pod bound that must leave (answer.go).
//
// Release (steady-state from the holder once it is back: Ready with a new boot ID,
// healthgate.go; or Lock.Release) clears the lock and, only if we cordoned the node
// and no operator holds it, uncordons it, in one conditioned write. A holder is never
// expired on a timer alone: it may be rebooting right now. A holder whose Node is
// deleted frees its slot by construction, since the check no longer lists it.
//
// Machine IDs map to nodes through an informer cache indexed by Zincati ID (derived from
// status.nodeInfo.machineID, or the AnnotationZincatiID override): no LIST per request,
// and steady-state of a node that holds nothing costs no API request at all.
//
// The lock keeps its own compare-and-swap scheme on Node annotations rather than a
// Lease or kubectl's drain helper: a Lease holds one holder, not k, and kubectl's
// drain helper blocks its caller, polls per pod and falls back to DELETE, where a
// held FleetLock request must answer the moment a drain ends and never delete.
//
// Where things are, one concern per file:
//
//   - boundary.go: what the lock asks of the policy (Policy) and tells around a grant
//     (Grant, GrantHooks); options.go: Options and their defaults.
//   - lock.go: the Lock, its node cache and the two FleetLock endpoints.
//   - acquire.go: a pre-reboot request's acquisition of a slot (claim, check,
//     promote, withdraw); decide.go: the rule; contend.go: waiting for a free slot.
//   - admit.go: asking the policy whether a node may take a slot (Candidate, Refusal).
//   - answer.go: waiting for the holder's drain and the checks before a 2xx.
//   - release.go: releasing a slot (Lock.Release, and ReleaseNode for the command).
//   - healthgate.go: steady-state waiting for evidence of this reboot (back).
//   - stale.go: releasing holders that rebooted but never called steady-state.
//   - resume.go: every replica resumes the drains of holders that have not rebooted.
//   - waiting.go: the waiting marks a request writes on its node (the queue, Queue
//     in queue.go); reserve.go: when a free slot is reserved for a waiter with no
//     request open; reserveclaim.go: the claim made on its behalf; giveback.go: the
//     node taking its reservation, or the slot given back when it does not.
//   - order.go: the group order (a group's nodes go after its after groups').
//   - handlers.go: the node cache's event handlers (the ID map, resolve.go, and the
//     per-group and per-node wakes, wait.go).
//   - holders.go: the holder list behind the status page; metrics.go: the metrics.
//   - health.go: the API server health probe behind api_unavailable and /readyz.
//   - events.go: the Events posted on Nodes and their reasons.
//   - annotations.go: the annotations and label the lock lives in; nodes.go: the
//     node cache's indexes and transform; errors.go: the errors PreReboot returns.
//   - reregistered.go: a machine back under a new Node name frees its old Node's slot.
//
// docs/model/lock-requests.pml is a Promela model of the requests (claims, holds,
// withdrawals, stale claims) that spin checks.
package lock
