package reconciler

import (
	"time"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
)

// FrontendOf returns the frontend this reconciler wrote under revNAT.
// Like Apply, it is for the syncer's goroutine only.
func (r *Reconciler) FrontendOf(revNAT maps.RevNATID) (maps.Frontend, bool) {
	fe, ok := r.revNATs[revNAT]
	return fe, ok
}

// BackendOf returns the backend this reconciler wrote under id. Like
// Apply, it is for the syncer's goroutine only.
func (r *Reconciler) BackendOf(id maps.BackendID) (maps.Backend, bool) {
	b, ok := r.ids[id]
	return b, ok
}

// IDs resolves the ids the datapath reports (in events and counters) to
// what they stand for: a Reconciler is one.
type IDs interface {
	FrontendOf(maps.RevNATID) (maps.Frontend, bool)
	BackendOf(maps.BackendID) (maps.Backend, bool)
}

// Adjuster changes the model's state after it is computed and before it
// is written, on the syncer's goroutine: outlier ejection leaves failing
// backends out. It returns the adjusted state (state itself unchanged)
// and the time the adjustment must be redone even with no new input
// (zero for none).
type Adjuster interface {
	Adjust(state lb.State, ids IDs, now time.Time) (lb.State, time.Time)
	// Applied says how writing the adjusted state ended.
	Applied(err error)
}
