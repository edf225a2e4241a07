package sandbox

import (
	"errors"
	"slices"
)

// Undo collects what a program that builds sandboxes (the demo, the
// benchmarks) must take down again, as t.Cleanup does for tests.
type Undo []func() error

// Add registers f to run at Run.
func (u *Undo) Add(f func() error) { *u = append(*u, f) }

// Run runs every registered function, the last registered first, and
// joins their errors.
func (u Undo) Run() error {
	var errs []error
	for _, f := range slices.Backward(u) {
		errs = append(errs, f())
	}
	return errors.Join(errs...)
}
