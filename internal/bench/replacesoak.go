package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/fakeasg"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/policy"
	"github.com/reboot-manager/reboot-manager/replace"
	rmaws "github.com/reboot-manager/reboot-manager/replace/aws"
)

// The replacement soak (-only replace-soak; part of the default run): many simulated
// reboots of random length up to just under replaceAfter, Ready flaps of random
// length (up to twice replaceAfter) from kubelets that keep renewing their Lease,
// replicas killed at random moments, always two replicas reconciling, three Auto
// Scaling groups and maxInFlight 2. Some nodes never return. It counts terminations
// of nodes that came back (must be 0) and replacements (new instances launched) of
// each node that never returned (must be exactly 1).
func init() { benchmarks = append(benchmarks, "replace-soak") }

// The soak's shape, sized for about two minutes on two busy cores.
const (
	soakNodes        = 24
	soakCycles       = 12 // reboots per node
	soakReplaceAfter = 4 * time.Second
	soakMaxDown      = 3 * time.Second // the longest normal reboot: just under replaceAfter
	soakLeasePeriod  = 200 * time.Millisecond
	soakLook         = 200 * time.Millisecond // how often each replica reconciles
	soakKillEvery    = 5 * time.Second
	soakLostShare    = 0.02 // of the reboots, the machine never comes back
	// Scaled down with replaceAfter: a replica waits soakAPIGrace after it starts, and
	// takes a claim up once its record stayed unchanged for soakResumeAfter.
	soakAPIGrace    = time.Second
	soakResumeAfter = time.Second
)

type soak struct {
	env    *controlplane.Env
	fake   *fakeasg.Fake
	cloud  *rmaws.Cloud
	config *policy.Config
	ns     string
	prefix string

	mu       sync.Mutex
	instance map[string]string // node → its instance
	launches map[string]int    // instance → new instances launched for it
	lost     map[string]bool   // nodes that never returned
	back     map[string]bool   // nodes that came back at least once
	kills    int
	reboots  int
	flaps    int
}

// replaceSoak runs the soak if -only asks for it.
func replaceSoak(ctx context.Context, c config, env *controlplane.Env, p *printer) error {
	if !c.runs("replace-soak") {
		return nil
	}
	p.sectionf("Replacement soak: %d nodes x %d reboots (up to %s down), replaceAfter %s, Ready flaps up to %s, 2 replicas, one killed every %s",
		soakNodes, soakCycles, soakMaxDown, soakReplaceAfter, 2*soakReplaceAfter, soakKillEvery)
	s, err := newSoak(ctx, env)
	if err != nil {
		return err
	}
	defer s.fake.Close()
	start := time.Now()
	stopReplicas := s.runReplicas(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, soakNodes)
	for i := range soakNodes {
		wg.Go(func() {
			// A Node deleted under its feet is a replacement of a node that came back:
			// counted below.
			if err := s.node(ctx, i); err != nil && !apierrors.IsNotFound(err) {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		stopReplicas()
		return err
	}
	err = s.awaitReplaced(ctx, 2*time.Minute)
	stopReplicas()
	if err != nil {
		return err
	}
	s.print(p, time.Since(start))
	return nil
}

func newSoak(ctx context.Context, env *controlplane.Env) (*soak, error) {
	s := &soak{env: env, fake: fakeasg.New(), prefix: "soak-" + simkubelet.RandomID()[:5],
		instance: map[string]string{}, launches: map[string]int{}, lost: map[string]bool{}, back: map[string]bool{}}
	ns, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "replace-soak-"}}, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	s.ns = ns.Name
	for g := range 3 {
		s.fake.AddGroup(&fakeasg.Group{Name: fmt.Sprintf("asg-%d", g), Tags: map[string]string{"reboot-manager/replace": "true"}, Desired: soakNodes / 3})
	}
	s.fake.OnTerminate = func(group, id string) {
		s.mu.Lock()
		s.launches[id]++
		n := len(s.launches)
		s.mu.Unlock()
		// The group launches a new instance, whose node joins.
		_, _ = s.addNode(ctx, fmt.Sprintf("%s-new-%d", s.prefix, n), group)
	}
	client := autoscaling.NewFromConfig(aws.Config{Region: "eu-west-1",
		Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", "")},
		func(o *autoscaling.Options) { o.BaseEndpoint = aws.String(s.fake.URL()) })
	s.cloud = rmaws.New(client, rmaws.Options{Backoff: 10 * time.Millisecond})
	if s.config, err = policy.Parse([]byte("replacement: {maxInFlight: 2, maxFailures: 1000, timeout: 1m}")); err != nil {
		return nil, err
	}
	s.config.Defaults.ReplaceAfter.Duration = soakReplaceAfter // under policy.MinReplaceAfter, set after validation
	return s, nil
}

// addNode creates a Ready node that is an instance of group, its kubelet renewing
// its Lease every soakLeasePeriod.
func (s *soak) addNode(ctx context.Context, name, group string) (*corev1.Node, error) {
	id := fmt.Sprintf("i-%017x", rand.Uint64()>>4)
	s.fake.AddInstance(group, id, "eu-west-1a")
	s.mu.Lock()
	s.instance[name] = id
	s.mu.Unlock()
	return s.env.Kubelet.AddNode(ctx, name, simkubelet.NodeOptions{ProviderID: "aws:///eu-west-1a/" + id, LeasePeriod: soakLeasePeriod})
}

// runReplicas keeps two replicas reconciling, killing one (its context cancelled,
// wherever it is) and starting a fresh one every soakKillEvery.
func (s *soak) runReplicas(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var serial atomic.Int32
	start := func() context.CancelFunc {
		rctx, kill := context.WithCancel(ctx)
		r := replace.New(replace.Options{Cloud: s.cloud, Client: s.env.Client, Namespace: s.ns,
			Identity: fmt.Sprintf("replica-%d", serial.Add(1)), Config: func() *policy.Config { return s.config },
			APIGrace: soakAPIGrace, ResumeAfter: soakResumeAfter})
		wg.Go(func() {
			for rctx.Err() == nil {
				_ = r.Reconcile(rctx)
				select {
				case <-rctx.Done():
				case <-time.After(soakLook):
				}
			}
		})
		return kill
	}
	replicas := []context.CancelFunc{start(), start()}
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(soakKillEvery):
			}
			i := rand.IntN(len(replicas))
			replicas[i]() // killed mid-step, perhaps
			replicas[i] = start()
			s.mu.Lock()
			s.kills++
			s.mu.Unlock()
		}
	})
	return func() { cancel(); wg.Wait() }
}

// node plays one node: soakCycles reboots, each told to reboot as the lock would,
// perhaps with a Ready flap from a live kubelet first, then down for a random time
// under replaceAfter, or for good.
func (s *soak) node(ctx context.Context, i int) error {
	name := fmt.Sprintf("%s-%02d", s.prefix, i)
	if _, err := s.addNode(ctx, name, fmt.Sprintf("asg-%d", i%3)); err != nil {
		return err
	}
	rep := replace.New(replace.Options{Cloud: s.cloud, Client: s.env.Client, Namespace: s.ns,
		Identity: "pre-reboot", Config: func() *policy.Config { return s.config }})
	for range soakCycles {
		sleep(ctx, rand.N(2*time.Second))
		n, g, err := s.hold(ctx, name)
		if err != nil {
			return err
		}
		if err := rep.ToldToReboot(ctx, n, g, time.Now()); err != nil {
			return err
		}
		if rand.Float64() < 0.5 {
			if err := s.flap(ctx, name, rand.N(2*soakReplaceAfter)); err != nil {
				return err
			}
		}
		if rand.Float64() < soakLostShare {
			s.mu.Lock()
			s.lost[name] = true
			s.mu.Unlock()
			return s.env.Kubelet.Fail(ctx, name)
		}
		if err := s.env.Kubelet.Reboot(ctx, name, rand.N(soakMaxDown)); err != nil {
			return err
		}
		s.mu.Lock()
		s.reboots++
		s.back[name] = true
		s.mu.Unlock()
		sleep(ctx, rand.N(time.Second)) // steady-state comes a little later
		if err := s.release(ctx, name); err != nil {
			return err
		}
		rep.Released(ctx, g)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// hold writes the lock's annotations of a promotion on the node, as the lock does.
func (s *soak) hold(ctx context.Context, name string) (*corev1.Node, lock.Grant, error) {
	since := time.Now().UTC().Format(time.RFC3339Nano)
	n, err := s.patch(ctx, name, map[string]string{lock.AnnotationStatus: string(lock.StateRebooting), lock.AnnotationSince: since, lock.AnnotationGroup: "default"})
	if err != nil {
		return nil, lock.Grant{}, err
	}
	h, _ := lock.HolderOf(n)
	return n, lock.Grant{Node: name, UID: n.UID, Group: "default", Promoted: h.Since, BootID: n.Status.NodeInfo.BootID}, nil
}

func (s *soak) release(ctx context.Context, name string) error {
	_, err := s.patch(ctx, name, map[string]string{lock.AnnotationStatus: string(lock.StateReady), lock.AnnotationSince: time.Now().UTC().Format(time.RFC3339Nano)})
	return err
}

func (s *soak) patch(ctx context.Context, name string, annotations map[string]string) (*corev1.Node, error) {
	for {
		n, err := s.env.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		if n.Annotations == nil {
			n.Annotations = map[string]string{}
		}
		for k, v := range annotations {
			n.Annotations[k] = v
		}
		n, err = s.env.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) {
			return n, err
		}
	}
}

// flap sets Ready=False with a fresh heartbeat for d, as a CNI restart does, the
// kubelet renewing its Lease throughout; then Ready again.
func (s *soak) flap(ctx context.Context, name string, d time.Duration) error {
	if err := setReady(ctx, s.env.Client, name, corev1.ConditionFalse); err != nil {
		return err
	}
	s.mu.Lock()
	s.flaps++
	s.mu.Unlock()
	sleep(ctx, d)
	return setReady(ctx, s.env.Client, name, corev1.ConditionTrue)
}

func setReady(ctx context.Context, client kubernetes.Interface, name string, status corev1.ConditionStatus) error {
	for {
		n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for i := range n.Status.Conditions {
			if c := &n.Status.Conditions[i]; c.Type == corev1.NodeReady {
				c.Status, c.LastHeartbeatTime, c.LastTransitionTime = status, metav1.Now(), metav1.Now()
			}
		}
		_, err = client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) {
			return err
		}
	}
}

// awaitReplaced waits until every lost node's record is gone (replaced, its Node
// deleted), or timeout.
func (s *soak) awaitReplaced(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		recs, err := replace.ListRecords(ctx, s.env.Client, s.ns)
		if err != nil {
			return err
		}
		pending := 0
		s.mu.Lock()
		for _, r := range recs {
			if s.lost[r.Node] {
				pending++
			}
		}
		s.mu.Unlock()
		if pending == 0 {
			return nil
		}
		sleep(ctx, time.Second)
	}
	fmt.Fprintf(os.Stderr, "replace-soak: lost nodes still not replaced after %s\n", timeout)
	return nil
}

func (s *soak) print(p *printer, took time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	wrong, lostOnce, lostOther := 0, 0, 0
	for node, id := range s.instance {
		switch n := s.launches[id]; {
		case s.lost[node] && n == 1:
			lostOnce++
		case s.lost[node]:
			lostOther++
			p.linef("  %s never returned and was replaced %d times", node, n)
		case n > 0:
			wrong++
			p.linef("  %s came back, and its instance %s was terminated", node, id)
		}
	}
	p.linef("%d reboots that came back (%d nodes), %d Ready flaps with live kubelets, %d nodes never returned, %d replica kills, in %s",
		s.reboots, len(s.back), s.flaps, len(s.lost), s.kills, took.Round(time.Second))
	p.linef("terminations of nodes that came back     %d (target 0): %s", wrong, verdict(wrong == 0))
	p.linef("lost nodes replaced exactly once         %d of %d: %s", lostOnce, len(s.lost), verdict(lostOnce == len(s.lost) && lostOther == 0))
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}
