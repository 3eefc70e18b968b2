package evict

import (
	"errors"
	"regexp"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// pdbInCause finds the PodDisruptionBudget's name in the cause kube-apiserver
// attaches to a refused eviction (pkg/registry/core/pod/storage/eviction.go):
//
//	The disruption budget NAME needs 2 healthy pods and has 2 currently
//	The disruption budget NAME is still being processed by the server.
//	The disruption budget NAME does not allow evicting pods currently ...
var pdbInCause = regexp.MustCompile(`^The disruption budget (\S+) `)

// pdbFromRefusal returns the name of the PodDisruptionBudget that made the API
// server refuse an eviction, or "" if the reply does not name one. It reads the
// causes of a 429 (type "DisruptionBudget"), and the details of the 403 the server
// answers for a budget in a broken state.
func pdbFromRefusal(err error) string {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return ""
	}
	s := status.Status()
	if s.Details == nil {
		return ""
	}
	switch {
	case s.Code == 429 || s.Reason == metav1.StatusReasonTooManyRequests:
		for _, c := range s.Details.Causes {
			if c.Type != policyv1.DisruptionBudgetCause {
				continue
			}
			if m := pdbInCause.FindStringSubmatch(c.Message); m != nil {
				return strings.TrimRight(m[1], ".,:;")
			}
		}
	case s.Reason == metav1.StatusReasonForbidden && s.Details.Group == "policy" && s.Details.Kind == "poddisruptionbudget":
		// "disruptions allowed is negative", "DisruptedPods map too big".
		return s.Details.Name
	}
	return ""
}

// tooManyPDBs reports the API server's refusal to evict a pod that more than one
// PodDisruptionBudget selects (a 500 whose message says so).
func tooManyPDBs(err error) bool {
	return err != nil && strings.Contains(err.Error(), "more than one PodDisruptionBudget")
}

// pdbsSelecting returns the names of the budgets among pdbs that select pod, as the
// eviction subresource matches them: same namespace, a valid selector that matches
// the pod's labels (an empty selector matches every pod, a missing one none).
func pdbsSelecting(pod *corev1.Pod, pdbs []policyv1.PodDisruptionBudget) []string {
	var names []string
	for i := range pdbs {
		pdb := &pdbs[i]
		if pdb.Namespace != pod.Namespace {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil || !sel.Matches(labels.Set(pod.Labels)) {
			continue
		}
		names = append(names, pdb.Name)
	}
	sort.Strings(names)
	return names
}
