package maps

import "golang.org/x/sys/unix"

var (
	errE2BIG  error = unix.E2BIG
	errENOSPC error = unix.ENOSPC
	errENOMEM error = unix.ENOMEM
)
