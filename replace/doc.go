// Package replace replaces, through their cloud's instance group, nodes that were
// granted a reboot and never came back, so that the rollout does not stall behind
// their slot. It is off unless a group's replaceAfter is set (policy file).
//
// The Replacer records each grant of a replaceable node (node, instance, group) in a
// ConfigMap that outlives the Node, watches for holders that stay NotReady (or vanish)
// longer than replaceAfter, and replaces them after guards: dry run, a circuit breaker
// on failed replacements, at most one replacement in flight per instance group and a
// global limit, then the Cloud's own preflight. It waits for a node of a new instance
// of the group to be Ready, deletes the old Node object (its lock slot goes with it) and
// forgets the record. Every step is recorded in the ConfigMap, so a restarted replica
// resumes; a write conditioned on the record's resourceVersion claims a replacement,
// so exactly one replica acts on a node.
//
// Clouds implement Cloud; replace/aws is the AWS Auto Scaling one. docs/replacement.md
// describes the whole for operators, and how to add a cloud.
package replace
