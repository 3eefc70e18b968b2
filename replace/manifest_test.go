package replace_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/replace"
)

// The shipped manifests grant what replacing needs, no more than it asks for: the
// whole replacement of a failed node, by the manifests' ServiceAccount, in their
// namespace (records, the in-flight Lease, the kubelets' Leases, the Node's delete).
func TestManifestGrantsReplacement(t *testing.T) {
	r := newRig(t, time.Second, "")
	ctx := t.Context()
	bin, err := controlplane.BinDir()
	require.NoError(t, err)
	for _, f := range []string{"deployment.yaml", "replacement.yaml"} {
		out, err := exec.Command(filepath.Join(bin, "kubectl"), "--kubeconfig="+r.env.Kubeconfig, "apply", "-f",
			filepath.Join("..", "kubernetes", f)).CombinedOutput()
		require.NoError(t, err, "kubectl apply -f %s:\n%s", f, out)
	}
	client, _ := r.env.ServiceAccountClient(t, "reboot-manager", "reboot-manager")
	r.ns = "reboot-manager"
	r.first = r.replacerWith("pre-reboot", client)
	rep := r.replacerWith("replica", client)

	node := r.prefix + "-a"
	id := r.addNode(node, asg)
	require.NoError(t, r.grant(node))
	require.NotNil(t, r.record(node))
	require.NoError(t, r.env.Kubelet.Fail(ctx, node))
	r.reconcileUntil("replaced by the manifests' ServiceAccount", func() bool { return r.record(node) == nil }, rep)
	assert.Equal(t, "Terminating", r.fake.InstanceState(id))
	assert.False(t, r.nodeExists(node))
	l, err := r.env.Client.CoordinationV1().Leases("reboot-manager").Get(ctx, replace.LeaseInFlight, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "{}", strings.TrimSpace(l.Annotations["rebootmanager/in-flight"]), "its place in flight given back")
}
