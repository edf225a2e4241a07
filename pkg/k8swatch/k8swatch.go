// Package k8swatch is socklb's Kubernetes source: shared informers on
// Services, EndpointSlices and this node's Node, whose caches keep only
// what the model reads (slimObject). Its event handlers only note which
// Services changed and poke the syncer; the syncer reads the changed
// Services' objects from the informers' caches (all of them at a full
// resync), and only after every informer has synced, so a restarted agent
// never programs a partial view. PodSource watches
// this node's Pods and the Namespaces, which the bypass reads.
package k8swatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/socklb/socklb/pkg/lb"
)

// labelServiceProxyName marks Services that another proxy owns; like
// kube-proxy, the agent asks the API server not to send them at all.
const labelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// labelZone is the well-known zone label of a Node.
const labelZone = "topology.kubernetes.io/zone"

// Options configure a Source.
type Options struct {
	Client kubernetes.Interface
	// NodeName is this node; its Node object gives the zone. Empty: no
	// Node informer, and node-local policies have no local endpoints.
	NodeName string
	// ServiceSelector, when set, is also sent to the API server so that
	// the agent only receives the Services it handles.
	ServiceSelector labels.Selector
	// Resync is the informers' resync period; 0 disables it.
	Resync   time.Duration
	Logger   *slog.Logger
	OnChange func()
}

// Source offers the informers' caches as an lb.Input.
type Source struct {
	opts      Options
	log       *slog.Logger
	factories []informers.SharedInformerFactory
	services  corelisters.ServiceLister
	slices    discoverylisters.EndpointSliceLister
	byService cache.Indexer // the slice cache, indexed by Service
	nodes     corelisters.NodeLister
	changes   changes
	synced    []cache.InformerSynced
	ready     atomic.Bool
}

// New sets up the informers; Run starts them.
func New(opts Options) (*Source, error) {
	if opts.Client == nil {
		return nil, errors.New("k8swatch: no client")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.OnChange == nil {
		opts.OnChange = func() {}
	}
	svcSelector, err := serverSideSelector(opts.ServiceSelector)
	if err != nil {
		return nil, err
	}
	s := &Source{opts: opts, log: opts.Logger}
	watch := func(inf cache.SharedIndexInformer, handler cache.ResourceEventHandler) error {
		if err := inf.SetTransform(slimObject); err != nil {
			return fmt.Errorf("k8swatch: set transform: %w", err)
		}
		reg, err := inf.AddEventHandler(handler)
		if err != nil {
			return fmt.Errorf("k8swatch: add event handler: %w", err)
		}
		s.synced = append(s.synced, reg.HasSynced)
		return nil
	}

	svcFactory := informers.NewSharedInformerFactoryWithOptions(opts.Client, opts.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = svcSelector }))
	svcInformer := svcFactory.Core().V1().Services()
	s.services = svcInformer.Lister()
	if err := watch(svcInformer.Informer(), serviceHandler(&s.changes, opts.OnChange)); err != nil {
		return nil, err
	}

	sliceFactory := informers.NewSharedInformerFactoryWithOptions(opts.Client, opts.Resync)
	sliceInformer := sliceFactory.Discovery().V1().EndpointSlices()
	s.slices = sliceInformer.Lister()
	if err := sliceInformer.Informer().AddIndexers(cache.Indexers{indexByService: sliceService}); err != nil {
		return nil, fmt.Errorf("k8swatch: add index: %w", err)
	}
	s.byService = sliceInformer.Informer().GetIndexer()
	if err := watch(sliceInformer.Informer(), sliceHandler(&s.changes, opts.OnChange)); err != nil {
		return nil, err
	}
	s.factories = append(s.factories, svcFactory, sliceFactory)

	if opts.NodeName != "" {
		nodeFactory := informers.NewSharedInformerFactoryWithOptions(opts.Client, opts.Resync,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", opts.NodeName).String()
			}))
		nodeInformer := nodeFactory.Core().V1().Nodes()
		s.nodes = nodeInformer.Lister()
		// The node's zone is in every sync's settings: its handler
		// records no key.
		if err := watch(nodeInformer.Informer(), changeHandler(opts.OnChange)); err != nil {
			return nil, err
		}
		s.factories = append(s.factories, nodeFactory)
	}
	return s, nil
}

// serverSideSelector is the label selector sent with the Service list and
// watch: never another proxy's Services, and only the selected ones.
func serverSideSelector(user labels.Selector) (string, error) {
	notOthers, err := labels.NewRequirement(labelServiceProxyName, selection.DoesNotExist, nil)
	if err != nil {
		return "", fmt.Errorf("k8swatch: selector: %w", err)
	}
	sel := labels.NewSelector().Add(*notOthers)
	if user != nil {
		reqs, selectable := user.Requirements()
		if !selectable {
			// labels.Nothing(): keep it client-side, where it drops all.
			return sel.String(), nil
		}
		sel = sel.Add(reqs...)
	}
	return sel.String(), nil
}

// Run starts the informers and blocks until ctx is done. It pokes
// OnChange once every informer has synced.
func (s *Source) Run(ctx context.Context) error {
	start := time.Now()
	s.log.Info("waiting for informers to sync", "node", s.opts.NodeName)
	serve(ctx, s.factories, s.synced, func() {
		s.ready.Store(true)
		s.log.Info("informers synced", "took", time.Since(start).Round(time.Millisecond))
		s.opts.OnChange()
	})
	return nil
}

// serve starts the factories, calls ready once the informers have
// synced, and shuts the factories down when ctx is done.
func serve(ctx context.Context, factories []informers.SharedInformerFactory, synced []cache.InformerSynced, ready func()) {
	for _, f := range factories {
		f.Start(ctx.Done())
	}
	defer func() {
		for _, f := range factories {
			f.Shutdown()
		}
	}()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return // ctx ended first
	}
	ready()
	<-ctx.Done()
}

// changeHandler calls onChange for every add, update and delete but the
// informer's resyncs.
func changeHandler(onChange func()) cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { onChange() },
		UpdateFunc: func(old, obj any) {
			if old != obj {
				onChange()
			}
		},
		DeleteFunc: func(any) { onChange() },
	}
}

// HasSynced is true once every informer has its first full list.
func (s *Source) HasSynced() bool { return s.ready.Load() }

// Input returns the cached objects. They are shared with the informers:
// callers must not modify them.
func (s *Source) Input() lb.Input {
	var in lb.Input
	svcs, err := s.services.List(labels.Everything())
	if err != nil {
		s.log.Error("list services from cache", "error", err)
	}
	slices, err := s.slices.List(labels.Everything())
	if err != nil {
		s.log.Error("list endpointslices from cache", "error", err)
	}
	in.Services = svcs
	in.EndpointSlices = slices
	in.Node = s.node()
	return in
}

// Changed returns the Services whose Service or EndpointSlices changed
// since the last call, and forgets them; all is true when the handlers
// lost count (see maxPending), and then keys is empty.
func (s *Source) Changed() (keys []types.NamespacedName, all bool) {
	return s.changes.take()
}

// Objects returns the cached Service of key, if any, and the cached
// EndpointSlices labelled for it. Like Input's, they are shared with the
// informers.
func (s *Source) Objects(key types.NamespacedName) ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	var svcs []*corev1.Service
	if svc, err := s.services.Services(key.Namespace).Get(key.Name); err == nil {
		svcs = []*corev1.Service{svc}
	}
	objs, err := s.byService.ByIndex(indexByService, key.Namespace+"/"+key.Name)
	if err != nil {
		s.log.Error("look up endpointslices in cache", "service", key.String(), "error", err)
	}
	var slices []*discoveryv1.EndpointSlice
	for _, o := range objs {
		if sl, ok := o.(*discoveryv1.EndpointSlice); ok {
			slices = append(slices, sl)
		}
	}
	return svcs, slices
}

// Node returns what the source knows of this node.
func (s *Source) Node() lb.NodeInfo { return s.node() }

func (s *Source) node() lb.NodeInfo {
	info := lb.NodeInfo{Name: s.opts.NodeName}
	if s.nodes == nil {
		return info
	}
	n, err := s.nodes.Get(s.opts.NodeName)
	if err != nil {
		return info // not created yet, or gone: zone unknown
	}
	info.Zone = n.Labels[labelZone]
	return info
}
