// Package controlplane starts a real Kubernetes control plane on loopback for
// integration tests: etcd, kube-apiserver (RBAC on, audit log on),
// kube-controller-manager (the controllers a drain depends on) and kube-scheduler,
// plus a simulated kubelet (package simkubelet) that plays every node's kubelet.
//
// Lock conflicts, evictions and PodDisruptionBudgets are behaviour of the API server
// and the disruption controller; client-go's fake clientset never returns a 409 and
// its evictions neither delete pods nor consult PDBs. Tests of that behaviour use this
// package instead.
//
// The binaries come from hack/controlplane.sh, which builds them from the official Go
// modules at pinned versions into a gitignored cache. The folder is taken from
// CONTROLPLANE_BIN when set (make test sets it), otherwise the script is run.
//
// One control plane is shared by all tests of a test binary: call Shared from a test,
// and RunTests from TestMain so that it is stopped when the tests end. Child processes
// are started with a parent-death signal, so a test binary that panics does not leave
// them behind; the next start removes temp folders whose owner is gone.
package controlplane
