// Package replace replaces, through their cloud's instance group, nodes that were
// told to reboot and never came back, so that the rollout does not stall behind
// their slot. It is off unless a group's replaceAfter is set (policy file).
//
// The Replacer implements lock.GrantHooks (hooks.go): at each 2xx to pre-reboot it
// records the grant of a replaceable node (Node UID, promotion, instance, group, the
// moment and the boot ID) in a ConfigMap that outlives the Node (record.go). A node
// failed to return only on evidence this replica observed about this reboot, on its
// own clock: for replaceAfter after the 2xx, continuously, the same boot ID and a
// silent kubelet, its Lease in kube-node-lease not renewed, or the Node gone
// (evidence.go). It is then replaced after guards: dry run, a circuit breaker on
// failed replacements, the in-flight lock (one replacement per instance group and a
// global limit, a Lease written only with a resourceVersion precondition: limits.go),
// the Cloud's own preflight; and a fresh read of the Node, its Lease and the lock just
// before terminating (replacer.go). It waits for a node of a new instance of the
// group to be Ready, deletes the old Node object (UID precondition; its lock slot
// goes with it) and forgets the record. Every step is recorded in the ConfigMap, so a
// restarted replica resumes; a write conditioned on the record's resourceVersion
// claims a replacement, so exactly one replica acts on a node.
//
// Clouds implement Cloud; replace/aws is the AWS Auto Scaling one. docs/replacement.md
// describes the whole for operators, and how to add a cloud.
package replace
