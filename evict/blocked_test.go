package evict_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/reboot-manager/reboot-manager/evict"
)

const protectedMessage = "evictions of protected pods are refused by policy"

// denyProtectedEvictions installs issue 15's ValidatingAdmissionPolicy: CREATE of
// pods/eviction is denied for pods whose name starts with "protected-" (the
// eviction's admission request names the pod but does not carry it), in the test's
// namespace only. It returns once the API server enforces it.
func (c *cluster) denyProtectedEvictions(pod string) {
	c.t.Helper()
	ctx := context.Background()
	name := "deny-protected-" + c.id
	fail := admissionv1.Fail
	_, err := c.client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: &fail,
			MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionv1.RuleWithOperations{
					Operations: []admissionv1.OperationType{admissionv1.Create},
					Rule:       admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods/eviction"}},
				},
			}}},
			Validations: []admissionv1.Validation{{
				Expression: "!object.metadata.name.startsWith('protected-')",
				Message:    protectedMessage,
			}},
		},
	}, metav1.CreateOptions{})
	require.NoError(c.t, err)
	c.t.Cleanup(func() {
		_ = c.client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	_, err = c.client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        name,
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
			MatchResources: &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{corev1.LabelMetadataName: c.ns},
			}},
		},
	}, metav1.CreateOptions{})
	require.NoError(c.t, err)
	c.t.Cleanup(func() {
		_ = c.client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	// A dry-run eviction goes through admission: once it is denied, the policy holds.
	c.waitFor(time.Minute, "the eviction policy enforced", func(ctx context.Context) (bool, error) {
		err := c.client.PolicyV1().Evictions(c.ns).Evict(ctx, &policyv1.Eviction{
			ObjectMeta:    metav1.ObjectMeta{Name: pod, Namespace: c.ns},
			DeleteOptions: &metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}},
		})
		return err != nil && strings.Contains(err.Error(), protectedMessage), nil
	})
}

// Issue 15 item 1's failing input: a ValidatingAdmissionPolicy refuses the eviction
// of a Deployment's only pod (no budget). The drain's progress says blocked, with the
// policy's own message and the pod; a Warning Event says the same and is posted
// again while the block lasts; the blocked gauge carries the reason. Before, the
// progress said "draining, 1 pods left" and only a log line named the denial.
func TestDrainBlockedByAdmissionPolicy(t *testing.T) {
	c := newCluster(t)
	node := c.addNode("vap", true)
	c.deployment("protected", 1, nil)
	pod := c.waitRunning(node, "protected", 1)[0]
	c.denyProtectedEvictions(pod.Name)
	c.cordon(node, true)

	d := c.drainer(c.client, evict.Options{
		BackoffBase: 100 * time.Millisecond, BackoffMax: 500 * time.Millisecond, BlockedEventInterval: 2 * time.Second,
	})
	p := c.start(d, node)
	var b evict.Block
	c.waitFor(30*time.Second, "the drain blocked by the admission policy", func(context.Context) (bool, error) {
		p, _ = d.Progress(node)
		var ok bool
		b, ok = p.Blocked()
		return ok, nil
	})
	assert.Equal(t, evict.BlockedByAdmission, b.Reason)
	assert.Equal(t, c.ns+"/"+pod.Name, b.Pod)
	assert.Contains(t, b.Message, protectedMessage)
	assert.False(t, b.Since.IsZero())
	assert.Contains(t, p.String(), protectedMessage)
	assert.Contains(t, p.String(), pod.Name)
	assert.Empty(t, p.BlockedBy, "no budget is blamed")
	assert.False(t, p.BlockedSince.IsZero())
	require.Error(t, p.Err)
	var status apierrors.APIStatus
	assert.ErrorAs(t, p.Err, &status, "Err is the refusal: %v", p.Err)
	assert.Contains(t, p.Err.Error(), protectedMessage)

	metrics := gather(t, d)
	assert.Positive(t, metrics[`rebootmanager_drain_blocked_since_timestamp_seconds{node="`+node+`",reason="AdmissionDenied"}`])

	evs := c.waitEvents(node, evict.ReasonDrainBlocked)
	for _, e := range evs {
		if e.Reason == evict.ReasonDrainBlocked {
			assert.Equal(t, corev1.EventTypeWarning, e.Type)
			assert.Contains(t, e.Note, protectedMessage)
			assert.Contains(t, e.Note, pod.Name)
			require.NotNil(t, e.Related)
			assert.Equal(t, pod.Name, e.Related.Name)
		}
	}
	// Posted again while it lasts: the events library makes the repeat a series.
	c.waitFor(30*time.Second, "the blocked event posted again", func(context.Context) (bool, error) {
		for _, e := range c.nodeEvents(node) {
			if e.Reason == evict.ReasonDrainBlocked && e.Series != nil && e.Series.Count >= 2 {
				return true, nil
			}
		}
		return false, nil
	})
	select {
	case <-p.Done:
		t.Fatalf("drain ended although every eviction is refused: %s", p)
	default:
	}
}

// A 429 that names no budget (API Priority and Fairness) is retried and blamed on no
// budget, even though a budget selects the pod. Before, the budgets selecting the pod
// were listed and named as blocking. (The real API server's 429s from APF need a
// saturated server; the fake clientset's reactor plays one.)
func TestTooManyRequestsNamingNoBudgetIsARetry(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "uid-n1"}}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "ns", UID: "uid-web-1", Labels: map[string]string{"app": "web"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web", UID: "rs", Controller: new(bool(true))}}},
		Spec:   corev1.PodSpec{NodeName: "n1"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns"},
		Spec:       policyv1.PodDisruptionBudgetSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}},
	}
	client := fake.NewClientset(node, pod, pdb)
	var attempts atomic.Int32
	client.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		attempts.Add(1)
		return true, nil, apierrors.NewTooManyRequests("Too many requests, please try again later.", 0)
	})
	d := evict.New(client, evict.Options{BackoffBase: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go d.Run(ctx)
	d.Start(node)
	require.Eventually(t, func() bool { return attempts.Load() >= 3 }, 10*time.Second, 10*time.Millisecond)
	p, _ := d.Progress("n1")
	assert.Empty(t, p.BlockedBy, "no budget is blamed")
	for _, b := range p.Blocks {
		assert.NotEqual(t, evict.BlockedByPDB, b.Reason)
	}
	assert.True(t, apierrors.IsTooManyRequests(p.Err), "Err: %v", p.Err)
}
