// Package lock is the reboot lock: at most Slots nodes of a FleetLock group hold it at
// once, and it lives in Node annotations (no database; see annotations.go for the keys).
//
// A node's lock state is Ready (or no annotation), Claiming, or Rebooting (it holds the
// lock). A pre-reboot request for a node:
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
// someone always wins. ../shared/model/lock.pml is a Promela model of exactly this.
//
// Release (steady-state from the holder, or Lock.Release) clears the lock and, only if
// we cordoned the node, uncordons it, in one conditioned write. A holder is never
// expired on a timer alone: it may be rebooting right now. A holder whose Node is
// deleted frees its slot by construction, since the check no longer lists it.
//
// Machine IDs map to nodes through an informer cache indexed by Zincati ID (derived from
// status.nodeInfo.machineID, or the AnnotationZincatiID override): no LIST per request,
// and steady-state of a node that holds nothing costs no API request at all.
package lock
