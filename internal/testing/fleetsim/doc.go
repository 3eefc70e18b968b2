// Package fleetsim simulates a fleet of Fedora CoreOS nodes rolling an OS update under
// reboot-manager: Nodes played by the simulated kubelet, real Deployments, DaemonSets and
// PodDisruptionBudgets run by the real controllers, and one simulated Zincati per node
// speaking the exact FleetLock wire format.
//
// Each simulated Zincati does what Zincati does: steady-state at start until a 2xx;
// then, the update being staged, pre-reboot every Options.Poll (with jitter) until a
// 2xx; then the reboot (the node goes NotReady and comes back with a new boot ID after
// Options.Downtime); then steady-state until a 2xx.
//
// While the fleet rolls, a checker follows the cluster through watches and records
// every broken promise as a Violation: more nodes of a group holding the lock than
// slots; a node told to reboot while not holding the lock, not cordoned, or with pods
// left that should have been evicted; a PodDisruptionBudget with fewer healthy pods than
// it requires; a node cordoned before the rollout found uncordoned after it; a node
// rebooted other than exactly once.
//
// The fleet simulator drives the end-to-end tests, the benchmarks and `make demo`.
package fleetsim
