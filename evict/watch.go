package evict

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

// watchPods starts a watch of the pods bound to the node and waits until it has
// listed them. It returns a function that stops the watch, or false if the drain's
// context ended first.
func (dr *drain) watchPods() (func(), bool) {
	ctx, cancel := context.WithCancel(dr.ctx)
	selector := fields.OneTermEqualSelector("spec.nodeName", dr.node).String()
	factory := informers.NewSharedInformerFactoryWithOptions(dr.d.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = selector }),
		informers.WithTransform(stripManagedFields))
	inf := factory.Core().V1().Pods().Informer()
	dr.d.watchErrors("the drain of node "+dr.node+": its pods", inf)
	poke := func(any) { dr.poke() }
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    poke,
		UpdateFunc: func(_, obj any) { dr.poke() },
		DeleteFunc: poke,
	}); err != nil {
		dr.log.Error("cannot watch the node's pods", "err", err)
	}
	stop, ok := startAndSync(ctx, cancel, factory, inf)
	if ok {
		dr.pods = inf.GetStore()
	}
	return stop, ok
}

// startAndSync starts factory and waits until inf has listed what it watches. It
// returns a function that stops the watch (cancel, then the factory's shutdown), or
// false, the watch stopped, if ctx ended first.
func startAndSync(ctx context.Context, cancel context.CancelFunc, factory informers.SharedInformerFactory, inf cache.SharedIndexInformer) (func(), bool) {
	factory.Start(ctx.Done())
	stop := func() {
		cancel()
		factory.Shutdown()
	}
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		stop()
		return nil, false
	}
	return stop, true
}

// watchNode starts a watch of the drain's Node object and waits until it has listed
// it. The drain learns that its Node is gone when no Node of that name exists or one
// with another UID does (deleted and re-created). It returns a function that stops
// the watch, or false if the drain's context ended first.
func (dr *drain) watchNode() (func(), bool) {
	ctx, cancel := context.WithCancel(dr.ctx)
	selector := fields.OneTermEqualSelector("metadata.name", dr.node).String()
	factory := informers.NewSharedInformerFactoryWithOptions(dr.d.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = selector }),
		informers.WithTransform(stripNode))
	inf := factory.Core().V1().Nodes().Informer()
	dr.d.watchErrors("the drain of node "+dr.node+": its Node", inf)
	seen := func(obj any) {
		if n, ok := obj.(*corev1.Node); ok && n.Name == dr.node {
			dr.seeNode(n)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    seen,
		UpdateFunc: func(_, obj any) { seen(obj) },
		DeleteFunc: func(obj any) {
			if name, err := cache.DeletionHandlingObjectToName(obj); err == nil && name.Name == dr.node {
				dr.seeNode(nil)
			}
		},
	}); err != nil {
		dr.log.Error("cannot watch the node", "err", err)
	}
	stop, ok := startAndSync(ctx, cancel, factory, inf)
	if !ok {
		return nil, false
	}
	if _, exists, _ := inf.GetStore().GetByKey(dr.node); !exists {
		dr.seeNode(nil)
	}
	return stop, true
}

// seeNode records the drain's Node as the watch last saw it; nil when there is none.
// Another UID than the drain's is another Node: this one is gone.
func (dr *drain) seeNode(n *corev1.Node) {
	if n == nil || n.UID != dr.uid {
		dr.nodeGone.Store(true)
	} else {
		dr.nodeSeen.Store(n)
	}
	dr.poke()
}

// stripNode drops what a drain never reads of a Node: managed fields and images.
func stripNode(obj any) (any, error) {
	if n, ok := obj.(*corev1.Node); ok {
		n.ManagedFields = nil
		n.Status.Images = nil
	}
	return obj, nil
}
