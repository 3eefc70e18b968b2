package evict

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BlockReason says why a drain cannot finish. Each is a value of the `reason` label
// of rebootmanager_drain_blocked_since_timestamp_seconds.
type BlockReason string

const (
	// BlockedByPDB: a PodDisruptionBudget refuses the pod's eviction (a 429 naming
	// it, or the 500 for a pod that more than one budget selects). Block.Object is
	// the budget.
	BlockedByPDB BlockReason = "PodDisruptionBudget"
	// BlockedByAdmission: an admission check refuses the eviction: a
	// ValidatingAdmissionPolicy or a webhook (a 403, 400 or 422 that names one, or
	// any 400 or 422).
	BlockedByAdmission BlockReason = "AdmissionDenied"
	// BlockedByNamespaceTerminating: the pod's namespace is being deleted, and the
	// API server refuses new objects in it, evictions included.
	BlockedByNamespaceTerminating BlockReason = "NamespaceTerminating"
	// BlockedByForbidden: any other 403, such as reboot-manager's RBAC not allowing
	// pods/eviction.
	BlockedByForbidden BlockReason = "Forbidden"
	// BlockedByErrors: the pod's evictions have failed FailuresBeforeBlocked times
	// in a row for another reason (API server errors, timeouts, API Priority and
	// Fairness 429s naming no budget).
	BlockedByErrors BlockReason = "EvictionErrors"
	// BlockedByVolumes: the node's pods are gone but a VolumeAttachment of the node
	// is still attached past Options.VolumeDetachTimeout (FailurePolicy
	// KeepRefusing). Block.Object is the VolumeAttachment.
	BlockedByVolumes BlockReason = "VolumesAttached"
	// BlockedByPodsReturning: pods that must leave kept arriving on the cordoned
	// node (they tolerate node.kubernetes.io/unschedulable, or name the node
	// themselves) for Options.ReturningRounds rounds; the drain no longer evicts
	// the newcomers and does not finish while they are there.
	BlockedByPodsReturning BlockReason = "PodsReturning"
)

// FailuresBeforeBlocked is how many failed evictions of one pod in a row, for
// reasons that may pass (errors, 429s naming no budget), make it a Block.
const FailuresBeforeBlocked = 5

// Block is one reason a drain cannot go on, about one pod (or object).
type Block struct {
	// Reason is the kind of refusal.
	Reason BlockReason
	// Pod is the pod concerned (namespace/name); empty for a Block about no pod.
	Pod string
	// Object is what refuses, when it is an object: the PodDisruptionBudget
	// (namespace/name) for BlockedByPDB; empty otherwise.
	Object string
	// Message is the refusal's own message, as the API server answered it, or ours
	// for BlockedByPodsReturning.
	Message string
	// Since is when this block began.
	Since time.Time
}

// String is the block for a person: "PodDisruptionBudget ns/db refuses pod ns/db-0:
// MESSAGE".
func (b Block) String() string {
	who := string(b.Reason)
	if b.Object != "" {
		who += " " + b.Object
	}
	if b.Pod != "" {
		return fmt.Sprintf("%s: pod %s: %s", who, b.Pod, b.Message)
	}
	return fmt.Sprintf("%s: %s", who, b.Message)
}

// key tells blocks apart for their Since.
func (b Block) key() string { return string(b.Reason) + "\x00" + b.Object + "\x00" + b.Pod }

// eventKey tells blocks apart for their Events: one per budget, else one per pod.
func (b Block) eventKey() string {
	if b.Reason == BlockedByPDB {
		return string(b.Reason) + "\x00" + b.Object
	}
	return b.key()
}

// refusalReason classifies a refused or failed eviction that names no budget. It
// returns false for an error that may pass and is retried without blame.
func refusalReason(err error) (BlockReason, bool) {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return "", false
	}
	s := status.Status()
	msg := s.Message
	admission := strings.Contains(msg, "ValidatingAdmissionPolicy") || strings.Contains(msg, "admission webhook") ||
		strings.Contains(msg, "denied request") || strings.Contains(msg, "denied the request")
	switch {
	case s.Details != nil && hasCause(s, corev1.NamespaceTerminatingCause):
		return BlockedByNamespaceTerminating, true
	case apierrors.IsForbidden(err) && strings.Contains(msg, "because it is being terminated"):
		return BlockedByNamespaceTerminating, true
	case admission, apierrors.IsInvalid(err), apierrors.IsBadRequest(err):
		return BlockedByAdmission, true
	case apierrors.IsForbidden(err):
		return BlockedByForbidden, true
	}
	return "", false
}

// hasCause reports whether the status carries a cause of type t.
func hasCause(s metav1.Status, t metav1.CauseType) bool {
	for _, c := range s.Details.Causes {
		if c.Type == t {
			return true
		}
	}
	return false
}

// blocks lists what holds the drain now, each with the time it began (kept from the
// drain's previous view of it).
func (dr *drain) blocks() []Block {
	var out []Block
	for _, t := range dr.targets {
		if t.phase != podGone {
			out = append(out, t.blocks...)
		}
	}
	out = append(out, dr.volumeBlocks...)
	now := dr.d.opts.Clock.Now()
	seen := map[string]time.Time{}
	for i := range out {
		k := out[i].key()
		since, ok := dr.blockedAt[k]
		if !ok {
			since = now
		}
		out[i].Since, seen[k] = since, since
	}
	dr.blockedAt = seen
	sort.Slice(out, func(i, j int) bool {
		if out[i].Reason != out[j].Reason {
			return out[i].Reason < out[j].Reason
		}
		return out[i].key() < out[j].key()
	})
	return out
}

// postBlocks posts a Warning Event for each block when it begins, and again every
// Options.BlockedEventInterval while it lasts: Events expire (after an hour by
// default), and a block that lasts a day must still show one.
func (dr *drain) postBlocks(blocks []Block) {
	now := dr.d.opts.Clock.Now()
	posted := map[string]time.Time{}
	for _, b := range blocks {
		k := b.eventKey()
		if _, ok := posted[k]; ok {
			continue // another pod of the same budget
		}
		last, ok := dr.posted[k]
		if ok && now.Sub(last) < dr.d.opts.BlockedEventInterval {
			posted[k] = last
			continue
		}
		posted[k] = now
		dr.log.Info("drain blocked", "reason", b.Reason, "pod", b.Pod, "pdb", b.Object, "err", b.Message)
		related := podRef(b.Pod, "")
		note := fmt.Sprintf("Eviction of pod %s refused (%s): %s; retrying", b.Pod, b.Reason, b.Message)
		switch b.Reason {
		case BlockedByPDB:
			related = pdbRef(b.Object)
			note = fmt.Sprintf("PodDisruptionBudget %s refuses to let pod %s be evicted; retrying", b.Object, b.Pod)
		case BlockedByPodsReturning:
			note = fmt.Sprintf("Pod %s: %s", b.Pod, b.Message)
		}
		dr.eventf(related, corev1.EventTypeWarning, ReasonDrainBlocked, actionEvict, "%s", note)
	}
	dr.posted = posted
}
