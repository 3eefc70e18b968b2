package evict_test

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/reboot-manager/reboot-manager/evict"
)

// A Drainer runs under a server-owned context; a request starts a drain of a Node
// object and reads its progress. (A fake clientset stands in for the cluster here;
// the tests use a real control plane.)
func ExampleDrainer() {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "3f0c"}}
	d := evict.New(fake.NewClientset(node), evict.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)

	p := d.Start(node) // at once: a snapshot, never blocks
	<-p.Done
	p, _ = d.Progress("n1")
	fmt.Println(p.Phase, p.NodeUID, p)
	left, err := d.Remaining(ctx, node) // fresh from the API server, just before a 2xx
	fmt.Println(len(left), err)
	// Output:
	// Drained 3f0c drained
	// 0 <nil>
}
