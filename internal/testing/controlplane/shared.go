package controlplane

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

// Env is the control plane and simulated kubelet shared by the tests of one test binary.
type Env struct {
	*ControlPlane
	// Kubelet plays the kubelet of every node the tests create.
	Kubelet *simkubelet.Kubelet

	stopKubelet context.CancelFunc
}

var shared struct {
	once sync.Once
	env  *Env
	err  error
}

// EnvOptions tune StartEnvWith. The zero value is what StartEnv and Shared use.
type EnvOptions struct {
	// Kubelet configures the simulated kubelet (e.g. its pods' TerminationDelay).
	Kubelet simkubelet.Options
}

// StartEnv starts a control plane and a simulated kubelet; Stop stops both.
func StartEnv(ctx context.Context) (*Env, error) {
	return StartEnvWith(ctx, EnvOptions{})
}

// StartEnvWith is StartEnv with options.
func StartEnvWith(ctx context.Context, opts EnvOptions) (*Env, error) {
	cp, err := Start(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	kubelet, err := simkubelet.Start(ctx, cp.Client, opts.Kubelet)
	if err != nil {
		cancel()
		cp.Stop()
		return nil, err
	}
	return &Env{ControlPlane: cp, Kubelet: kubelet, stopKubelet: cancel}, nil
}

// Stop stops the simulated kubelet and the control plane.
func (e *Env) Stop() {
	e.stopKubelet()
	e.ControlPlane.Stop()
}

// Shared returns the test binary's control plane, starting it on first use. If it
// cannot start, the test fails with the reason: integration tests never skip.
func Shared(t testing.TB) *Env {
	t.Helper()
	shared.once.Do(func() {
		start := time.Now()
		shared.env, shared.err = StartEnv(context.Background()) //nolint:usetesting // the control plane outlives the test that starts it
		if shared.err == nil {
			fmt.Fprintf(os.Stderr, "controlplane: started in %s (%s)\n", time.Since(start).Round(time.Millisecond), shared.env.Dir)
		}
	})
	if shared.err != nil {
		t.Fatalf("the test control plane did not start: %v", shared.err)
	}
	return shared.env
}

// RunTests runs the tests and then stops the shared control plane, if one was started.
// Call it from TestMain: os.Exit(controlplane.RunTests(m)).
func RunTests(m *testing.M) int {
	code := m.Run()
	if shared.env != nil {
		shared.env.Stop()
	}
	return code
}

// Namespace creates a namespace for one test, waits until pods can be created in it
// (its default ServiceAccount exists), and deletes it when the test ends.
func (e *Env) Namespace(t testing.TB) string {
	t.Helper()
	ctx := t.Context()
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(name) > 40 {
		name = name[:40]
	}
	ns, err := e.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: strings.Trim(name, "-") + "-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		_ = e.Client.CoreV1().Namespaces().Delete(context.WithoutCancel(t.Context()), ns.Name, metav1.DeleteOptions{})
	})
	err = e.poll(ctx, time.Minute, "the default ServiceAccount of "+ns.Name, func(ctx context.Context) (bool, error) {
		_, err := e.Client.CoreV1().ServiceAccounts(ns.Name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, ignoreNotFound(err)
	})
	if err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// ServiceAccountClient returns a client authenticated as a ServiceAccount, with a token
// from the TokenRequest API, and the path of a kubeconfig file for it.
func (e *Env) ServiceAccountClient(t testing.TB, namespace, name string) (kubernetes.Interface, string) {
	t.Helper()
	tr, err := e.Client.CoreV1().ServiceAccounts(namespace).CreateToken(t.Context(), name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s/%s: %v", namespace, name, err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := WriteKubeconfig(path, e.Config.Host, e.Config.CAFile, tr.Status.Token); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	return kubernetes.NewForConfigOrDie(cfg), path
}

// CountingConfig returns a copy of the admin configuration whose requests are counted
// by verb and resource (e.g. "delete pods", "create pods/eviction").
func (e *Env) CountingConfig() (*rest.Config, *RequestCounter) {
	cfg := rest.CopyConfig(e.Config)
	c := &RequestCounter{counts: map[string]int{}}
	cfg.Wrap(c.wrap)
	return cfg, c
}

// AwaitNodeEvent waits up to 10 seconds for an Event about the named Node with the
// reason and a note containing text, and fails t if none comes.
func (e *Env) AwaitNodeEvent(t testing.TB, node, reason, text string) {
	t.Helper()
	var seen []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := e.Client.EventsV1().Events(metav1.NamespaceDefault).List(t.Context(), metav1.ListOptions{})
		if err != nil {
			t.Fatalf("list events: %v", err)
		}
		seen = seen[:0]
		for _, ev := range list.Items {
			if ev.Regarding.Kind == "Node" && ev.Regarding.Name == node {
				if ev.Reason == reason && strings.Contains(ev.Note, text) {
					return
				}
				seen = append(seen, ev.Reason+": "+ev.Note)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no Event %s on node %s with %q; the node has: %q", reason, node, text, seen)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
