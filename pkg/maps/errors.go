package maps

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// mapError names the map in err and adds ErrMapFull or ErrNoMemory when
// the kernel's errno says so, so that errors.Is finds them through every
// wrapping above. cilium/ebpf keeps the errno in the chain (a full hash
// map's update reads "key too big for map: argument list too long").
func mapError(name string, err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, ErrMapFull), errors.Is(err, ErrNoMemory):
		// Already classified (the fake, or a fault injected as such).
	case errors.Is(err, unix.E2BIG), errors.Is(err, unix.ENOSPC):
		err = fmt.Errorf("%w: %w", ErrMapFull, err)
	case errors.Is(err, unix.ENOMEM):
		err = fmt.Errorf("%w: %w", ErrNoMemory, err)
	}
	return fmt.Errorf("map %s: %w", name, err)
}
