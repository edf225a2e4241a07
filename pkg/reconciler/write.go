package reconciler

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/socklb/socklb/pkg/maps"
)

// transientRetries bound how often one map write is retried after a
// transient kernel error (ENOMEM: e.g. per-CPU memory for a new counter)
// before the sync fails and is retried as a whole with backoff.
var transientRetries = []time.Duration{time.Millisecond, 10 * time.Millisecond, 100 * time.Millisecond}

// retry runs fn, again after a pause while it fails with a transient error.
func retry(fn func() error) error {
	err := fn()
	for _, pause := range transientRetries {
		if !errors.Is(err, maps.ErrNoMemory) {
			return err
		}
		time.Sleep(pause)
		err = fn()
	}
	return err
}

// write executes p's steps in order. Bookkeeping follows each write that
// succeeded, so that after a failure it still says what the maps hold.
func (r *Reconciler) write(p plan, st *Stats) error {
	defer r.count()
	for _, s := range p.steps {
		var err error
		switch s.kind {
		case stepDeleteFrontend:
			err = r.deleteFrontend(s.fe, st)
		case stepAddBackend:
			err = r.addBackend(s.backend, st)
		case stepPublish:
			err = r.publish(s.svc, st)
		case stepDeleteBackend:
			err = r.deleteBackend(s.id, st)
		case stepAddVIP:
			err = r.addVIP(s.vip, st)
		case stepDeleteVIP:
			err = r.deleteVIP(s.vip, st)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (r *Reconciler) deleteFrontend(fe maps.Frontend, st *Stats) error {
	old, ok := r.services[fe]
	if !ok {
		return nil
	}
	if err := retry(func() error { return r.maps.DeleteService(fe) }); err != nil {
		return fmt.Errorf("delete %s (%s): %w", fe, old.name, err)
	}
	st.Departed = append(st.Departed, departures(old.revNAT, append(slices.Clone(old.backends), old.held...), nil)...)
	r.unref(old.backends)
	r.unref(old.held)
	r.account(fe, old, -1)
	delete(r.revNATs, old.revNAT)
	delete(r.services, fe)
	st.Deleted++
	return nil
}

func (r *Reconciler) addBackend(b maps.Backend, st *Stats) error {
	if _, ok := r.backends[b]; ok {
		return nil
	}
	id, err := r.allocBackend()
	if err != nil {
		return err
	}
	if err := retry(func() error { return r.maps.UpsertBackend(id, b) }); err != nil {
		return fmt.Errorf("add backend %s: %w", b, err)
	}
	r.backends[b] = id
	r.ids[id] = b
	r.unused[id] = true // until a frontend lists it
	r.used.backends++
	st.BackendsAdded++
	return nil
}

func (r *Reconciler) publish(d desiredService, st *Stats) error {
	ids := make([]maps.BackendID, len(d.backends))
	for i, b := range d.backends {
		id, ok := r.backends[b]
		if !ok {
			// The plan adds every backend before the frontends that list it.
			return fmt.Errorf("publish %s (%s): backend %s: %w", d.fe, d.name, b, maps.ErrUnknownBackend)
		}
		ids[i] = id
	}
	old, exists := r.services[d.fe]
	revNAT := old.revNAT
	if !exists {
		var err error
		if revNAT, err = r.allocRevNAT(); err != nil {
			return err
		}
	}
	err := retry(func() error {
		return r.maps.PublishService(maps.Service{
			Frontend: d.fe, RevNATID: revNAT, Name: d.name, Backends: ids,
			Flags: d.flags, AffinityTimeout: d.affinity,
		})
	})
	if err != nil {
		return fmt.Errorf("publish %s (%s): %w", d.fe, d.name, err)
	}
	// Ejected members stay in the backend map (their connect outcomes
	// with them) while their frontends hold them out.
	var held []maps.BackendID
	for _, b := range d.ejected {
		if id, ok := r.backends[b]; ok {
			held = append(held, id)
		}
	}
	w := written{revNAT: revNAT, name: d.name, service: d.service, flags: d.flags, affinity: d.affinity, backends: ids, held: held}
	if exists {
		// Leaving the slots for an ejection is no departure; leaving
		// the Service, ejected or not, is.
		before := append(slices.Clone(old.backends), old.held...)
		st.Departed = append(st.Departed, departures(revNAT, before, append(slices.Clone(ids), held...))...)
		r.account(d.fe, old, -1)
	}
	r.ref(ids)
	r.ref(held)
	r.unref(old.backends)
	r.unref(old.held)
	r.account(d.fe, w, 1)
	r.services[d.fe] = w
	r.revNATs[revNAT] = d.fe
	st.Published++
	r.log.Debug("published", "frontend", d.fe, "service", d.name, "backends", len(ids))
	return nil
}

func (r *Reconciler) deleteBackend(id maps.BackendID, st *Stats) error {
	if _, known := r.ids[id]; !known || r.refs[id] > 0 {
		delete(r.unused, id)
		return nil
	}
	if err := retry(func() error { return r.maps.DeleteBackend(id) }); err != nil {
		return fmt.Errorf("delete backend %d: %w", id, err)
	}
	delete(r.backends, r.ids[id])
	delete(r.ids, id)
	delete(r.refs, id)
	delete(r.unused, id)
	r.used.backends--
	st.BackendsRemoved++
	return nil
}

func (r *Reconciler) addVIP(a netip.Addr, st *Stats) error {
	if err := retry(func() error { return r.maps.AddVIP(a) }); err != nil {
		return fmt.Errorf("add cluster IP %s: %w", a, err)
	}
	r.vips[a] = true
	st.VIPsAdded++
	return nil
}

func (r *Reconciler) deleteVIP(a netip.Addr, st *Stats) error {
	if err := retry(func() error { return r.maps.DeleteVIP(a) }); err != nil {
		return fmt.Errorf("delete cluster IP %s: %w", a, err)
	}
	delete(r.vips, a)
	st.VIPsDeleted++
	return nil
}
