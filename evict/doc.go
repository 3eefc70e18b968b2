// Package evict drains nodes before they reboot: it evicts the pods that must leave a
// node, through the Eviction API so that PodDisruptionBudgets are honoured, and
// reports the node drained only once those pods are gone.
//
// # Glossary
//
//   - Drain: the work of emptying one node, from Start to drained, failed, or
//     forgotten. A Drainer keeps at most one per node.
//   - Target: a pod the drain must move. When the drain starts, every pod bound to
//     the node (spec.nodeName) is a target except mirror pods (annotation
//     kubernetes.io/config.mirror: only the kubelet removes them), pods controlled by
//     a DaemonSet (it would put them right back) and pods that have Succeeded or
//     Failed. Pods without a controller and pods with emptyDir volumes are targets
//     too; they are counted in Progress.Unmanaged and Progress.LocalData, logged, and
//     posted as Warning Events, because evicting them loses the pod or its data. Pods
//     bound to the node after the drain started (they tolerate the cordon, or name
//     the node) become targets when the final LIST finds them; after
//     Options.ReturningRounds such rounds, newcomers are not evicted but block the
//     drain (BlockedByPodsReturning).
//   - Gone: a target is gone when no pod with its UID is on the node any more, or it
//     has Succeeded or Failed, or it has been terminating on a node whose kubelet is
//     silent (Ready Unknown; a live kubelet's Ready False does not count) past its
//     deletion timestamp plus Options.SkipWaitForDeleteTimeout. A pod of the same
//     name with another UID (a StatefulSet's replacement) is another pod.
//   - Drained: every target is gone, a final LIST finds no pod that must leave, and
//     no VolumeAttachment of the node is attached (Options.VolumeDetachTimeout bounds
//     that wait). An accepted eviction is not enough: the drain waits until the pod
//     objects are gone from the API server.
//   - Blocked: something refuses to let a target leave: a Block in Progress.Blocks,
//     with a BlockReason (a PodDisruptionBudget, an admission policy or webhook, a
//     terminating namespace, a 403, persistent errors, pods returning, volumes
//     attached), the refusal's own message and the pod. Refused evictions are
//     retried.
//   - Node: a drain is bound to one Node object, its UID. When that Node is deleted
//     or replaced by another of the same name, the drain stops evicting and ends
//     NodeGone.
//   - Self: reboot-manager's own pod (Options.Self). If it is a target it is evicted
//     last, once every other target is gone, so that the drain gets as far as it can
//     before this process stops. The replica that takes over resumes the drain.
//
// We do not use kubectl's drain helper (k8s.io/kubectl/pkg/drain): it blocks its
// caller for the whole drain, falls back to DELETE when evictions are refused, and
// polls each pod to see it go; a drain here runs in the background, never deletes
// unless told to, and watches the node's pods.
//
// # Files
//
// drainer.go holds the Drainer (one drain per node); drain.go a drain's state
// machine (its Phase, changed only by setPhase, and the run loop); target.go each
// pod's state machine (its podPhase, changed only by setPodPhase); attempt.go the
// eviction requests and their outcomes; filters.go which pods must leave, with
// kubectl's filter names; pdb.go what a refusal says about PodDisruptionBudgets;
// block.go what blocks a drain; watch.go the watches of a drain's pods and Node;
// finish.go the final check; volumes.go the wait for VolumeAttachments;
// remaining.go the check before a 2xx; gaveup.go drains that gave up;
// progress.go, events.go and metrics.go what is reported.
//
// # Contract
//
// Start is idempotent and cheap: it starts a drain of the Node unless one of the same
// UID is known, and returns a snapshot of its Progress without blocking or making a
// request. A drain that ended (Drained, Failed or NodeGone) stays so until Forget;
// one that gave up (Failed) is returned again after Forget, with GaveUpBefore, until
// GaveUp sees a change or Retry is called. Progress.Done is never nil and is closed
// when the drain ends: drained, failed, node gone, or stopped by Forget. Remaining
// lists, fresh from the API server, what must still leave a node, and sends a
// drained drain back to evicting it.
// Forget cancels the drain, waits until no request of it is in flight, and drops it;
// the next Start begins afresh. Drains run under the context given to Run, not the
// context of whoever called Start, and begin work once Run runs.
//
// The drainer never cordons: the caller does (package lock cordons in the same
// write that takes the reboot lock). It never DELETEs a pod unless the FailurePolicy
// is Force and the Timeout has passed.
//
// A new process resumes an interrupted drain from the cluster's state: Start lists
// whatever is on the node; pods already terminating are waited for, not evicted again.
// Timeout counts from this process's Start.
//
// # Evictions
//
// Each target is evicted with a policy/v1 Eviction carrying a UID precondition, so a
// replacement of the same name is never evicted by mistake. At most
// Options.Parallelism evictions of a drain are in flight, and all drains together
// send at most Options.EvictionsPerSecond. The answers:
//
//   - 201/200: accepted; the pod terminates and the drain waits for it to be gone.
//   - 404, or 409 for a pod of that name with another UID: the target is gone.
//   - 429 from a PodDisruptionBudget: retried with backoff (Options.BackoffBase to
//     BackoffMax, with jitter). The API server names the budget in a status cause of
//     type "DisruptionBudget" ("The disruption budget NAME needs 2 healthy pods and
//     has 2 currently"). For the 500 it answers for a pod that more than one budget
//     selects, the budgets of the namespace whose selector matches the pod are
//     listed and named. A watch on PodDisruptionBudgets cuts the wait short as soon
//     as a blocking budget allows a disruption.
//   - 429 naming no budget (API Priority and Fairness): a retry, blamed on nobody.
//   - 403, 400, 422 (admission policy or webhook, terminating namespace, RBAC): a
//     Block with the refusal's message; retried.
//   - Anything else: retried with backoff, reported in Progress.Err, and a Block
//     (EvictionErrors) after FailuresBeforeBlocked failures in a row.
//
// Each Block is posted as a Warning Event DrainBlocked when it begins (once per
// budget, else per pod) and again every Options.BlockedEventInterval while it lasts.
//
// With the default FailurePolicy, KeepRefusing, the drain never gives up: it retries
// until the budgets allow, and reports what blocks it. With Release it gives up after
// Options.Timeout: Progress.Failed is set and Done closed, and the caller releases
// the node. With Force, after Options.Timeout it DELETEs the targets still refused,
// each with its own grace period (a Warning Event DrainForced per pod), then waits for
// them to be gone as usual. A target that arrived during the drain is evicted for an
// Options.Timeout of its own, counted from when the drain found it, before it is
// deleted.
//
// # Watching
//
// Each drain watches the pods bound to its node (field selector spec.nodeName=NODE)
// and its Node (metadata.name=NODE), so that waiting for pods to go costs no request
// per pod. The watches end with the drain. The Drainer watches
// PodDisruptionBudgets and VolumeAttachments while Run runs.
//
// # Events and logs
//
// Events are posted on the Node (events.k8s.io/v1, in namespace "default"):
// DrainStarted, DrainUnmanagedPods, DrainLocalData, DrainBlocked (with the budget or
// the pod as related object), DrainSkippedTerminatingPod, DrainWaitingForVolumes,
// DrainVolumesAttached, DrainSucceeded, DrainFailed and DrainForced (one per deleted
// pod, with the pod as related object). The events library merges
// Events that differ only in their notes into a series; the related object keeps
// Events about different budgets or pods apart. Logs use constant messages with the
// keys node, pod, pdb and err: one info line per state change (drain started,
// blocked, drained), warnings for data loss, failures and deletions, and per-retry
// detail at debug level.
//
// # Permissions
//
// nodes: list, watch; pods: list, watch (and delete under Force); pods/eviction:
// create; poddisruptionbudgets (policy): list, watch; volumeattachments
// (storage.k8s.io): list, watch; events (events.k8s.io): create, patch.
package evict
