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
//     bound to the node after the drain started are not added: the node is cordoned,
//     so only pods that tolerate that arrive, and chasing pods that keep coming back
//     would never end.
//   - Gone: a target is gone when no pod with its UID is on the node any more, or it
//     has Succeeded or Failed. A pod of the same name with another UID (a
//     StatefulSet's replacement) is another pod; the target is gone.
//   - Drained: every target is gone. An accepted eviction is not enough: the drain
//     waits until the pod objects are gone from the API server (the kubelet has
//     stopped the containers), and checks that with a final LIST before it reports.
//   - Blocked: a PodDisruptionBudget refused a target's eviction (429). The budget is
//     named in Progress.BlockedBy; the eviction is retried.
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
// finish.go the final check; progress.go, events.go and metrics.go what is
// reported.
//
// # Contract
//
// Start is idempotent and cheap: it starts a drain of the node unless one is known,
// and returns a snapshot of its Progress without blocking or making a request. A
// drain that ended (Drained or Failed) stays so until Forget. Progress.Done is never
// nil and is closed when the drain ends: drained, failed, or stopped by Forget.
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
//     has 2 currently"); when a 429 names none, the budgets of the namespace whose
//     selector matches the pod are listed and named instead. So is the 500 the API
//     server answers for a pod that more than one budget selects. A watch on
//     PodDisruptionBudgets cuts the wait short as soon as a blocking budget allows a
//     disruption. A Warning Event DrainBlocked is posted once per budget per drain.
//   - Anything else: retried with backoff, and reported in Progress.Err.
//
// With the default FailurePolicy, KeepRefusing, the drain never gives up: it retries
// until the budgets allow, and reports what blocks it. With Release it gives up after
// Options.Timeout: Progress.Failed is set and Done closed, and the caller releases
// the node. With Force, after Options.Timeout it DELETEs the targets still refused,
// each with its own grace period (a Warning Event DrainForced per pod), then waits for
// them to be gone as usual.
//
// # Watching
//
// Each drain watches the pods bound to its node (field selector spec.nodeName=NODE),
// so that waiting for pods to go costs no request per pod. The watch ends with the
// drain.
//
// # Events and logs
//
// Events are posted on the Node (events.k8s.io/v1, in namespace "default"):
// DrainStarted, DrainUnmanagedPods, DrainLocalData, DrainBlocked (once per budget,
// with the budget as related object), DrainSucceeded, DrainFailed and DrainForced
// (one per deleted pod, with the pod as related object). The events library merges
// Events that differ only in their notes into a series; the related object keeps
// Events about different budgets or pods apart. Logs use constant messages with the
// keys node, pod, pdb and err: one info line per state change (drain started,
// blocked, drained), warnings for data loss, failures and deletions, and per-retry
// detail at debug level.
//
// # Permissions
//
// pods: list, watch (and delete under Force); pods/eviction: create;
// poddisruptionbudgets (policy): list, watch; events (events.k8s.io): create, patch.
package evict
