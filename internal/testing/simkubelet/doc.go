// Package simkubelet plays the kubelet of every node in a test cluster that has none.
//
// Without a kubelet, pods never become Running or Ready (so PodDisruptionBudgets never
// allow a disruption) and a deleted pod stays Terminating forever (so a drain never
// ends). The simulated kubelet, run in the test process:
//   - creates Nodes that report Ready, with capacity, a machine ID and a boot ID;
//   - renews each node's Lease in kube-node-lease every LeasePeriod (2s by default;
//     a kubelet renews every 10s), except while the node is down (rebooting, frozen
//     or failed), on its own clock (SetClockSkew);
//   - marks every pod bound to a node Running and Ready;
//   - finishes a pod's deletion after its termination delay (the shorter of the pod's
//     grace period and Options.TerminationDelay), as a kubelet does once containers stop;
//   - reboots a node on request: NotReady for a while, then Ready with a new boot ID.
//
// We chose this over kwok: it is a few hundred lines in the test process, needs no
// extra binary or configuration, and the fleet simulator drives reboots through the
// same API (new boot ID, NotReady for a set time) that kwok would need stages for.
package simkubelet
