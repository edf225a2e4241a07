//go:build !linux

package filesource

import (
	"errors"
	"fmt"
	"os"
)

// lease: file leases are Linux's; elsewhere the stability check stands in.
func lease(*os.File) (func() error, error) {
	return nil, fmt.Errorf("%w: %w", errNoLease, errors.ErrUnsupported)
}

const openFlags = os.O_RDONLY
