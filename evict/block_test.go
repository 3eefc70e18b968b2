package evict

import (
	"errors"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

func TestRefusalReason(t *testing.T) {
	pods := schema.GroupResource{Resource: "pods"}
	terminating := apierrors.NewForbidden(pods, "p", errors.New("unable to create new content in namespace ns because it is being terminated"))
	terminating.ErrStatus.Details.Causes = []metav1.StatusCause{{Type: corev1.NamespaceTerminatingCause, Message: "namespace ns is being terminated"}}
	vap := &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusUnprocessableEntity, Reason: metav1.StatusReasonInvalid,
		Message: `pods "protected-1" is forbidden: ValidatingAdmissionPolicy 'deny' with binding 'deny' denied request: no`,
	}}
	tests := []struct {
		name string
		err  error
		want BlockReason
		ok   bool
	}{
		{"namespace terminating", terminating, BlockedByNamespaceTerminating, true},
		{"admission policy (422)", vap, BlockedByAdmission, true},
		{"admission policy (403)", apierrors.NewForbidden(pods, "p", errors.New("ValidatingAdmissionPolicy 'x' with binding 'y' denied request: no")), BlockedByAdmission, true},
		{"webhook", apierrors.NewForbidden(pods, "p", errors.New(`admission webhook "guard.example.com" denied the request: no`)), BlockedByAdmission, true},
		{"bad request", apierrors.NewBadRequest("no"), BlockedByAdmission, true},
		{"RBAC", apierrors.NewForbidden(pods, "p", errors.New(`User "rm" cannot create resource "pods/eviction"`)), BlockedByForbidden, true},
		{"API priority and fairness (429, no budget)", apierrors.NewTooManyRequests("Too many requests, please try again later.", 1), "", false},
		{"server error", apierrors.NewInternalError(errors.New("etcd")), "", false},
		{"timeout", apierrors.NewTimeoutError("slow", 1), "", false},
		{"not an API error", errors.New("connection refused"), "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := refusalReason(tt.err)
			assert.Equal(t, tt.ok, ok)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestBlocksOf(t *testing.T) {
	tgt := &target{key: "ns/p"}
	apf := apierrors.NewTooManyRequests("Too many requests, please try again later.", 1)
	tgt.failures = 1
	assert.Empty(t, blocksOf(tgt, result{t: tgt, outcome: failed, err: apf}), "a 429 naming no budget is a retry, blamed on nobody")
	tgt.failures = FailuresBeforeBlocked
	b := blocksOf(tgt, result{t: tgt, outcome: failed, err: apf})
	if assert.Len(t, b, 1) {
		assert.Equal(t, BlockedByErrors, b[0].Reason, "once errors persist they are reported")
		assert.Equal(t, "Too many requests, please try again later.", b[0].Message)
	}
	b = blocksOf(tgt, result{t: tgt, outcome: refused, budgets: []string{"ns/a", "ns/b"}, err: errors.New("x")})
	assert.Equal(t, []Block{
		{Reason: BlockedByPDB, Pod: "ns/p", Object: "ns/a", Message: "x"},
		{Reason: BlockedByPDB, Pod: "ns/p", Object: "ns/b", Message: "x"},
	}, b)
}
