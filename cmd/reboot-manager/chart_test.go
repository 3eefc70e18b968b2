package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
)

// The manifest, and the chart rendered with every option on, apply server-side as Flux
// and Argo CD apply them, over an install made with kubectl apply: no conflict, and a
// server-side diff right after shows no drift. (A fieldRef without apiVersion, which
// the API server defaults, shows as drift.)
func TestManifestsApplyServerSide(t *testing.T) {
	env := controlplane.Shared(t)
	bin, err := controlplane.BinDir()
	require.NoError(t, err)
	kubectl := func(args ...string) (string, error) {
		out, err := exec.Command(filepath.Join(bin, "kubectl"), append([]string{"--kubeconfig=" + env.Kubeconfig}, args...)...).CombinedOutput()
		return string(out), err
	}
	files := []string{"../../kubernetes/deployment.yaml"}
	if helm := os.Getenv("HELM"); helm != "" {
		cmd := exec.Command("../../hack/chart.sh", "all-options")
		cmd.Env = append(os.Environ(), "HELM="+helm)
		out, err := cmd.Output()
		require.NoError(t, err, "hack/chart.sh all-options")
		// The test control plane has no Prometheus Operator CRDs.
		var docs []string
		for _, doc := range strings.Split(string(out), "\n---\n") {
			if !strings.Contains(doc, "apiVersion: monitoring.coreos.com/") {
				docs = append(docs, doc)
			}
		}
		f := filepath.Join(t.TempDir(), "all-options.yaml")
		require.NoError(t, os.WriteFile(f, []byte(strings.Join(docs, "\n---\n")), 0o600))
		files = append(files, f)
		t.Cleanup(func() { _, _ = kubectl("delete", "--wait=false", "-f", f) })
	} else {
		t.Log("HELM is not set (make test sets it): only kubernetes/deployment.yaml is applied")
	}
	for _, f := range files {
		out, err := kubectl("apply", "-f", f)
		require.NoError(t, err, "kubectl apply -f %s:\n%s", f, out)
		out, err = kubectl("apply", "--server-side", "--field-manager=gitops", "-f", f)
		require.NoError(t, err, "server-side apply of %s over kubectl apply:\n%s", f, out)
		out, err = kubectl("diff", "--server-side", "--field-manager=gitops", "-f", f)
		require.NoError(t, err, "server-side diff of %s right after its apply shows drift:\n%s", f, out)
	}
}

// The shipped manifest, and the chart with every option on, run the server as
// `reboot-manager serve` with flags that serve accepts.
func TestManifestsRunServe(t *testing.T) {
	manifests := map[string]string{}
	b, err := os.ReadFile("../../kubernetes/deployment.yaml")
	require.NoError(t, err)
	manifests["kubernetes/deployment.yaml"] = string(b)
	if helm := os.Getenv("HELM"); helm != "" {
		cmd := exec.Command("../../hack/chart.sh", "all-options")
		cmd.Env = append(os.Environ(), "HELM="+helm)
		out, err := cmd.Output()
		require.NoError(t, err, "hack/chart.sh all-options")
		manifests["all options"] = string(out)
	}
	for name, manifest := range manifests {
		var containers []corev1.Container
		for _, doc := range strings.Split(manifest, "\n---\n") {
			var d appsv1.Deployment
			require.NoError(t, yaml.Unmarshal([]byte(doc), &d))
			if d.Kind == "Deployment" {
				containers = append(containers, d.Spec.Template.Spec.Containers...)
			}
		}
		require.Len(t, containers, 1, name)
		args := containers[0].Args
		require.NotEmpty(t, args, name)
		assert.Equal(t, "serve", args[0], "%s: the container runs reboot-manager serve", name)
		_, err := parseConfig(args[1:], env(map[string]string{"POD_NAMESPACE": "reboot-manager"}), io.Discard)
		assert.NoError(t, err, "%s: serve's flags %q", name, args[1:])
	}
}
