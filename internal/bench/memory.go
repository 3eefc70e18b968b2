package main

import (
	"context"
	"fmt"
	"runtime"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/lock/locktest"
)

// memoryResult is the heap the node cache takes, with the lock's transform and without.
type memoryResult struct {
	nodes              int
	stripped, baseline uint64 // HeapInuse growth, bytes
}

// heapInuse returns HeapInuse after two full collections.
func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// benchMemory measures the heap the Lock's node cache holds once synced, then that of
// the same informer without the transform (the baseline), in this process.
func benchMemory(ctx context.Context, client kubernetes.Interface, nodes int) (memoryResult, error) {
	res := memoryResult{nodes: nodes}

	before := heapInuse()
	lctx, stop := context.WithCancel(ctx)
	l, err := lock.New(client, &locktest.Drained{}, lock.Options{})
	if err != nil {
		stop()
		return res, err
	}
	if err := l.Start(lctx); err != nil {
		stop()
		return res, err
	}
	after := heapInuse()
	runtime.KeepAlive(l)
	stop()
	res.stripped = after - min(after, before)

	// Let the stopped informer go before the baseline's turn.
	time.Sleep(500 * time.Millisecond)
	before = heapInuse()
	bctx, stop := context.WithCancel(ctx)
	defer stop()
	factory := informers.NewSharedInformerFactory(client, 0)
	inf := factory.Core().V1().Nodes().Informer()
	// The same indexes as the Lock's: by Zincati ID, and by lock group.
	if err := inf.AddIndexers(cache.Indexers{
		"zincatiID": func(obj any) ([]string, error) {
			id, err := fleetlock.ZincatiID(obj.(*corev1.Node).Status.NodeInfo.MachineID)
			if err != nil {
				return nil, nil //nolint:nilerr // not indexed
			}
			return []string{id}, nil
		},
		"group": func(obj any) ([]string, error) {
			if g := obj.(*corev1.Node).Annotations[lock.AnnotationGroup]; g != "" {
				return []string{g}, nil
			}
			return nil, nil
		},
	}); err != nil {
		return res, err
	}
	factory.Start(bctx.Done())
	if !cache.WaitForCacheSync(bctx.Done(), inf.HasSynced) {
		return res, fmt.Errorf("baseline cache did not sync")
	}
	after = heapInuse()
	if got := len(inf.GetStore().ListKeys()); got < nodes {
		return res, fmt.Errorf("baseline cache holds %d nodes, want at least %d", got, nodes)
	}
	runtime.KeepAlive(inf)
	res.baseline = after - min(after, before)
	return res, nil
}

func (r memoryResult) print(p *printer) {
	p.sectionf("Node cache memory, %d realistic Nodes (in-process, HeapInuse growth after runtime.GC)", r.nodes)
	p.linef("lock cache (stripNode transform)  %8.1f MiB  %6.1f KiB/node", mib(r.stripped), kib(r.stripped)/float64(r.nodes))
	p.linef("same informer, no transform       %8.1f MiB  %6.1f KiB/node", mib(r.baseline), kib(r.baseline)/float64(r.nodes))
	if r.stripped > 0 {
		p.linef("baseline / lock cache             %8.1fx", float64(r.baseline)/float64(r.stripped))
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
func kib(b uint64) float64 { return float64(b) / (1 << 10) }
