package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/simkubelet"
)

// labelBench marks the nodes a benchmark creates, with the benchmark's name.
const labelBench = "bench.rebootmanager/set"

// nodeSet is a set of nodes created for one benchmark.
type nodeSet struct {
	set   string
	names []string
	ids   []string // Zincati IDs, in the order of names
}

// createNodes creates n nodes named set-00000, set-00001, ... with workers requests in
// flight. Realistic nodes look like those of a real cluster: 50 container images in
// their status, a dozen labels and annotations, and managed fields of three managers
// (the kubelet registering the node, the kubelet's status heartbeat, the controller
// manager). The others carry only what the lock reads. The simulated kubelet runs no
// pod on them.
func createNodes(ctx context.Context, client kubernetes.Interface, set string, n, workers int, realistic bool) (*nodeSet, error) {
	s := &nodeSet{set: set, names: make([]string, n), ids: make([]string, n)}
	next := atomic.Int64{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				name := fmt.Sprintf("%s-%05d", set, i)
				machineID := simkubelet.RandomID()
				id, err := fleetlock.ZincatiID(machineID)
				if err == nil {
					err = createNode(ctx, client, set, name, machineID, i, realistic)
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("create node %s: %w", name, err)
					}
					mu.Unlock()
					return
				}
				s.names[i], s.ids[i] = name, id
			}
		})
	}
	wg.Wait()
	return s, firstErr
}

func createNode(ctx context.Context, client kubernetes.Interface, set, name, machineID string, i int, realistic bool) error {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{labelBench: set}}}
	node.Status = corev1.NodeStatus{
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady"}},
		NodeInfo:   corev1.NodeSystemInfo{MachineID: machineID, BootID: simkubelet.RandomID()},
		Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP(i)}},
	}
	if !realistic {
		_, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		return err
	}
	fillRealistic(node, machineID, i)
	// What a kubelet does: register the node with its status, then post status
	// heartbeats; then the controller manager sets the TTL annotation and the pod CIDR.
	created, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{FieldManager: "kubelet"})
	if err != nil {
		return err
	}
	now := metav1.Now()
	for j := range created.Status.Conditions {
		created.Status.Conditions[j].LastHeartbeatTime = now
	}
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{FieldManager: "kubelet"}); err != nil {
		return err
	}
	patch, _ := json.Marshal(map[string]any{
		"metadata": map[string]any{"annotations": map[string]string{"node.alpha.kubernetes.io/ttl": "0"}},
		"spec":     map[string]any{"podCIDR": podCIDR(i), "podCIDRs": []string{podCIDR(i)}},
	})
	_, err = client.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, patch, metav1.PatchOptions{FieldManager: "kube-controller-manager"})
	return err
}

func nodeIP(i int) string  { return fmt.Sprintf("10.%d.%d.%d", 1+i/65536, i/256%256, i%256) }
func podCIDR(i int) string { return fmt.Sprintf("10.%d.%d.0/24", 128+i/256%64, i%256) }

// fillRealistic gives node what a kubelet of a real cluster reports.
func fillRealistic(node *corev1.Node, machineID string, i int) {
	zone := fmt.Sprintf("eu-west-1%c", 'a'+rune(i%3))
	for k, v := range map[string]string{
		"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
		"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux", "kubernetes.io/hostname": node.Name,
		"node.kubernetes.io/instance-type": "m6i.2xlarge", "beta.kubernetes.io/instance-type": "m6i.2xlarge",
		"topology.kubernetes.io/region": "eu-west-1", "topology.kubernetes.io/zone": zone,
		"failure-domain.beta.kubernetes.io/region": "eu-west-1", "failure-domain.beta.kubernetes.io/zone": zone,
		"node-role.kubernetes.io/worker": "", "node.openshift.io/os_id": "fedora-coreos",
	} {
		node.Labels[k] = v
	}
	node.Annotations = map[string]string{
		"volumes.kubernetes.io/controller-managed-attach-detach": "true",
		"csi.volume.kubernetes.io/nodeid":                        fmt.Sprintf(`{"ebs.csi.aws.com":"i-0%016x"}`, rand.Uint64()),
		"projectcalico.org/IPv4Address":                          nodeIP(i) + "/16",
		"projectcalico.org/IPv4VXLANTunnelAddr":                  fmt.Sprintf("10.%d.%d.1", 128+i/256%64, i%256),
		"alpha.kubernetes.io/provided-node-ip":                   nodeIP(i),
	}
	node.Spec.ProviderID = fmt.Sprintf("aws:///%s/i-0%016x", zone, rand.Uint64())
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("8"),
		corev1.ResourceMemory:           resource.MustParse("32211484Ki"),
		corev1.ResourcePods:             resource.MustParse("110"),
		corev1.ResourceEphemeralStorage: resource.MustParse("125751276Ki"),
		"hugepages-1Gi":                 resource.MustParse("0"),
		"hugepages-2Mi":                 resource.MustParse("0"),
		"attachable-volumes-aws-ebs":    resource.MustParse("25"),
	}
	allocatable := capacity.DeepCopy()
	allocatable[corev1.ResourceCPU] = resource.MustParse("7910m")
	allocatable[corev1.ResourceMemory] = resource.MustParse("31194652Ki")
	allocatable[corev1.ResourceEphemeralStorage] = resource.MustParse("114820416316")
	now := metav1.NewTime(time.Now().Add(-time.Duration(rand.N(240)) * time.Hour))
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	images := make([]corev1.ContainerImage, 50)
	for j := range images {
		img := fmt.Sprintf("quay.io/example-org/service-%02d", (i+j)%80)
		images[j] = corev1.ContainerImage{
			Names: []string{
				fmt.Sprintf("%s@sha256:%064x", img, rand.Uint64()),
				fmt.Sprintf("%s:v1.%d.%d", img, j%7, i%13),
			},
			SizeBytes: 20_000_000 + rand.Int64N(900_000_000),
		}
	}
	node.Status = corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: allocatable,
		Conditions: []corev1.NodeCondition{
			cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
			cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
			cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
			cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "kubelet is posting ready status"),
		},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: nodeIP(i)},
			{Type: corev1.NodeHostName, Address: node.Name},
			{Type: corev1.NodeInternalDNS, Address: node.Name + ".eu-west-1.compute.internal"},
		},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: 10250}},
		NodeInfo: corev1.NodeSystemInfo{
			MachineID: machineID, SystemUUID: "ec2" + machineID[3:], BootID: simkubelet.RandomID(),
			KernelVersion: "6.15.9-201.fc42.x86_64", OSImage: "Fedora CoreOS 42.20250803.3.0",
			ContainerRuntimeVersion: "cri-o://1.33.3", KubeletVersion: "v1.36.3",
			OperatingSystem: "linux", Architecture: "amd64",
		},
		Images: images,
	}
}

// deleteNodes removes every node of the set, in one request.
func deleteNodes(ctx context.Context, client kubernetes.Interface, set string) error {
	return client.CoreV1().Nodes().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: labelBench + "=" + set})
}

// nodeJSONSize returns the size of one node of the set as the API server stores it,
// and how many managed-fields entries it has.
func nodeJSONSize(ctx context.Context, client kubernetes.Interface, name string) (int, int, error) {
	n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return 0, 0, err
	}
	b, err := json.Marshal(n)
	return len(b), len(n.ManagedFields), err
}
