package evict

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// refusal builds a 429 the way kube-apiserver's eviction subresource does.
func refusal(retryAfter int, causes ...metav1.StatusCause) error {
	err := apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", retryAfter)
	err.ErrStatus.Details.Causes = append(err.ErrStatus.Details.Causes, causes...)
	return err
}

func pdbCause(msg string) metav1.StatusCause {
	return metav1.StatusCause{Type: policyv1.DisruptionBudgetCause, Message: msg}
}

func TestPDBFromRefusal(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"needs healthy pods", refusal(0, pdbCause("The disruption budget web-pdb needs 2 healthy pods and has 2 currently")), "web-pdb"},
		{"dotted name", refusal(0, pdbCause("The disruption budget web.v2 needs 3 healthy pods and has 1 currently")), "web.v2"},
		{"still processed", refusal(10, pdbCause("The disruption budget guard is still being processed by the server.")), "guard"},
		{"sync failed", refusal(0, pdbCause("The disruption budget db does not allow evicting pods currently because it failed sync: no controller")), "db"},
		{"condition", refusal(0, pdbCause("The disruption budget db does not allow evicting pods currently (InsufficientPods): x")), "db"},
		{"plain", refusal(0, pdbCause("The disruption budget db does not allow evicting pods currently")), "db"},
		{"cause after another", refusal(0, metav1.StatusCause{Type: "Other", Message: "The disruption budget nope needs"}, pdbCause("The disruption budget yes needs 1 healthy pods and has 0 currently")), "yes"},
		{"wrapped", fmt.Errorf("evict pod ns/p: %w", refusal(0, pdbCause("The disruption budget w needs 1 healthy pods and has 0 currently"))), "w"},
		{"no cause (API priority and fairness)", refusal(1), ""},
		{"cause of another type", refusal(0, metav1.StatusCause{Type: "FieldValueInvalid", Message: "The disruption budget x needs"}), ""},
		{"unparsable cause", refusal(0, pdbCause("something new")), ""},
		{"broken budget (403)", apierrors.NewForbidden(schema.GroupResource{Group: "policy", Resource: "poddisruptionbudget"}, "neg", errors.New("pdb disruptions allowed is negative")), "neg"},
		{"RBAC refusal (403)", apierrors.NewForbidden(schema.GroupResource{Resource: "pods/eviction"}, "p", errors.New("no")), ""},
		{"not found", apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, "p"), ""},
		{"not an API error", errors.New("connection refused"), ""},
		{"nil", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, pdbFromRefusal(tt.err))
		})
	}
}

func TestTooManyPDBs(t *testing.T) {
	err := &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusInternalServerError,
		Message: "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
	}}
	assert.True(t, tooManyPDBs(err))
	assert.False(t, tooManyPDBs(apierrors.NewInternalError(errors.New("etcd down"))))
	assert.False(t, tooManyPDBs(nil))
}

func TestPDBsSelecting(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", Labels: map[string]string{"app": "web", "tier": "front"}}}
	pdb := func(ns, name string, sel *metav1.LabelSelector) policyv1.PodDisruptionBudget {
		return policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: policyv1.PodDisruptionBudgetSpec{Selector: sel}}
	}
	pdbs := []policyv1.PodDisruptionBudget{
		pdb("ns", "web", &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}),
		pdb("ns", "db", &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}),
		pdb("other", "web", &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}),
		pdb("ns", "all", &metav1.LabelSelector{}),
		pdb("ns", "none", nil),
		pdb("ns", "expr", &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"front", "edge"}}}}),
		pdb("ns", "invalid", &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: "Bogus"}}}),
	}
	assert.Equal(t, []string{"all", "expr", "web"}, pdbsSelecting(pod, pdbs))
	assert.Empty(t, pdbsSelecting(pod, nil))
}
