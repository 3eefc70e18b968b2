package simkubelet_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

func TestMain(m *testing.M) { os.Exit(controlplane.RunTests(m)) }

// A node's kubelet renews its Lease in kube-node-lease every LeasePeriod, owned by
// the Node; not while the node is down (failed, or rebooting); again once it is back.
func TestLeaseRenewedWhileUp(t *testing.T) {
	env := controlplane.Shared(t)
	ctx := t.Context()
	name := "lease-" + simkubelet.RandomID()[:8]
	node, err := env.Kubelet.AddNode(ctx, name, simkubelet.NodeOptions{LeasePeriod: 50 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Nodes().Delete(context.WithoutCancel(t.Context()), name, metav1.DeleteOptions{})
	})
	leases := env.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	renewTime := func() string {
		l, err := leases.Get(ctx, name, metav1.GetOptions{})
		require.NoError(t, err)
		require.Len(t, l.OwnerReferences, 1)
		assert.Equal(t, node.UID, l.OwnerReferences[0].UID)
		return l.Spec.RenewTime.String() + "/" + l.ResourceVersion
	}
	renewed := func(what string) {
		first := renewTime()
		require.Eventually(t, func() bool { return renewTime() != first }, 10*time.Second, 20*time.Millisecond, what)
	}
	renewed("renewed while up")

	rebooted := make(chan error, 1)
	go func() { rebooted <- env.Kubelet.Reboot(ctx, name, 3*time.Second) }()
	// Renewed every 50ms while up: the same renewal 300ms apart means it stopped (a
	// renewal under way when the node went down may still land).
	require.Eventually(t, func() bool {
		before := renewTime()
		time.Sleep(300 * time.Millisecond)
		return renewTime() == before
	}, 3*time.Second, 10*time.Millisecond, "not renewed while down")
	require.NoError(t, <-rebooted)
	renewed("renewed once back")
}
