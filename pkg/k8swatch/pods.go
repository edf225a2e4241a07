package k8swatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// PodOptions configure a PodSource.
type PodOptions struct {
	Client   kubernetes.Interface
	NodeName string
	Resync   time.Duration
	Logger   *slog.Logger
	OnChange func()
}

// PodSource watches the Pods of this node (field selector on
// spec.nodeName) and the Namespaces, for the bypass. Its caches keep only
// what the bypass reads of them.
type PodSource struct {
	opts    PodOptions
	log     *slog.Logger
	factory []informers.SharedInformerFactory
	pods    corelisters.PodLister
	nss     corelisters.NamespaceLister
	synced  []cache.InformerSynced
	ready   atomic.Bool
}

// NewPodSource sets up the informers; Run starts them.
func NewPodSource(opts PodOptions) (*PodSource, error) {
	if opts.Client == nil {
		return nil, errors.New("k8swatch: no client")
	}
	if opts.NodeName == "" {
		return nil, errors.New("k8swatch: watching this node's pods needs the node name (--node-name)")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.OnChange == nil {
		opts.OnChange = func() {}
	}
	s := &PodSource{opts: opts, log: opts.Logger}
	handler := changeHandler(opts.OnChange)
	podFactory := informers.NewSharedInformerFactoryWithOptions(opts.Client, opts.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", opts.NodeName).String()
		}))
	podInformer := podFactory.Core().V1().Pods()
	nsFactory := informers.NewSharedInformerFactoryWithOptions(opts.Client, opts.Resync)
	nsInformer := nsFactory.Core().V1().Namespaces()
	for _, inf := range []cache.SharedIndexInformer{podInformer.Informer(), nsInformer.Informer()} {
		if err := inf.SetTransform(slim); err != nil {
			return nil, fmt.Errorf("k8swatch: set transform: %w", err)
		}
		reg, err := inf.AddEventHandler(handler)
		if err != nil {
			return nil, fmt.Errorf("k8swatch: add event handler: %w", err)
		}
		s.synced = append(s.synced, reg.HasSynced)
	}
	s.pods, s.nss = podInformer.Lister(), nsInformer.Lister()
	s.factory = []informers.SharedInformerFactory{podFactory, nsFactory}
	return s, nil
}

// slim keeps what the bypass reads: names, UID, labels, annotations,
// spec.hostNetwork and status.phase. A node's pods carry their whole
// spec and status otherwise, container statuses and managedFields
// included.
func slim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return &corev1.Pod{
			ObjectMeta: slimMeta(o.ObjectMeta),
			Spec:       corev1.PodSpec{HostNetwork: o.Spec.HostNetwork, NodeName: o.Spec.NodeName},
			Status:     corev1.PodStatus{Phase: o.Status.Phase},
		}, nil
	case *corev1.Namespace:
		return &corev1.Namespace{ObjectMeta: slimMeta(o.ObjectMeta)}, nil
	}
	return obj, nil // tombstones and the like
}

func slimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: m.Namespace, Name: m.Name, UID: m.UID, ResourceVersion: m.ResourceVersion,
		Labels: m.Labels, Annotations: m.Annotations}
}

// Run starts the informers and blocks until ctx is done.
func (s *PodSource) Run(ctx context.Context) error {
	start := time.Now()
	serve(ctx, s.factory, s.synced, func() {
		s.ready.Store(true)
		s.log.Info("pod and namespace informers synced", "took", time.Since(start).Round(time.Millisecond))
		s.opts.OnChange()
	})
	return nil
}

// HasSynced is true once both informers have their first full list.
func (s *PodSource) HasSynced() bool { return s.ready.Load() }

// Pods returns this node's pods from the cache; callers must not modify
// them.
func (s *PodSource) Pods() []*corev1.Pod {
	pods, err := s.pods.List(labels.Everything())
	if err != nil {
		s.log.Error("list pods from cache", "error", err)
	}
	return pods
}

// Pod returns one of this node's pods from the cache.
func (s *PodSource) Pod(namespace, name string) (*corev1.Pod, bool) {
	p, err := s.pods.Pods(namespace).Get(name)
	return p, err == nil
}

// NamespaceLabels returns a namespace's labels; false when it is not in
// the cache.
func (s *PodSource) NamespaceLabels(name string) (map[string]string, bool) {
	ns, err := s.nss.Get(name)
	if err != nil {
		return nil, false
	}
	return ns.Labels, true
}
