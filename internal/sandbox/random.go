package sandbox

import (
	"crypto/rand"
	"encoding/hex"
)

// randomSuffix returns 12 random hex digits for unique names.
func randomSuffix() string {
	var b [6]byte
	rand.Read(b[:]) // never returns an error (crypto/rand, Go ≥ 1.24)
	return hex.EncodeToString(b[:])
}
