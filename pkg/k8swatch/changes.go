package k8swatch

import (
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// maxPending bounds the keys the handlers keep between two syncs. Past it
// (the initial list, a namespace deleted at once) they stop counting and
// the next sync looks at everything, which then costs less than a look
// at each key.
const maxPending = 4096

// changes are the Service keys whose Service or EndpointSlices the
// handlers saw change since the syncer last took them, as kube-proxy's
// change trackers keep them. A key says only where to look: the syncer
// reads the objects themselves from the caches, which the informers
// update before they call the handlers.
type changes struct {
	mu   sync.Mutex
	keys map[types.NamespacedName]struct{}
	all  bool
}

func (c *changes) add(key types.NamespacedName) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.all {
		return
	}
	if c.keys == nil {
		c.keys = make(map[types.NamespacedName]struct{})
	}
	c.keys[key] = struct{}{}
	if len(c.keys) > maxPending {
		c.keys, c.all = nil, true
	}
}

// everything records a change the handlers cannot place.
func (c *changes) everything() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.keys, c.all = nil, true
}

// take returns the recorded changes and forgets them.
func (c *changes) take() ([]types.NamespacedName, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := make([]types.NamespacedName, 0, len(c.keys))
	for k := range c.keys {
		keys = append(keys, k)
	}
	all := c.all
	c.keys, c.all = nil, false
	return keys, all
}

// deleted returns the last known state of a deleted object, which the
// informer hands over wrapped when it missed the delete itself.
func deleted(obj any) any {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return obj
}

// serviceHandler records the key of every Service added, changed or
// deleted, and pokes onChange. An update of an object by itself is the
// informer's resync, which changes nothing.
func serviceHandler(c *changes, onChange func()) cache.ResourceEventHandlerFuncs {
	note := func(obj any) {
		if s, ok := deleted(obj).(*corev1.Service); ok {
			c.add(types.NamespacedName{Namespace: s.Namespace, Name: s.Name})
		} else {
			c.everything()
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { note(obj); onChange() },
		UpdateFunc: func(old, obj any) {
			if old == obj {
				return
			}
			note(obj)
			onChange()
		},
		DeleteFunc: func(obj any) { note(obj); onChange() },
	}
}

// sliceHandler records the Service an EndpointSlice counts for, before
// and after a change: a slice whose label moved counts for two. A slice
// without the label counts for none.
func sliceHandler(c *changes, onChange func()) cache.ResourceEventHandlerFuncs {
	note := func(obj any) {
		s, ok := deleted(obj).(*discoveryv1.EndpointSlice)
		if !ok {
			c.everything()
			return
		}
		if name := s.Labels[discoveryv1.LabelServiceName]; name != "" {
			c.add(types.NamespacedName{Namespace: s.Namespace, Name: name})
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { note(obj); onChange() },
		UpdateFunc: func(old, obj any) {
			if old == obj {
				return
			}
			note(old)
			note(obj)
			onChange()
		},
		DeleteFunc: func(obj any) { note(obj); onChange() },
	}
}

// indexByService is the slice informer's index of the Service each slice
// counts for, which Objects reads.
const indexByService = "service"

func sliceService(obj any) ([]string, error) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{s.Namespace + "/" + name}, nil
}
