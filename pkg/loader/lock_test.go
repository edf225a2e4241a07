package loader

import "testing"

func TestFlockHolder(t *testing.T) {
	const locks = `1: POSIX  ADVISORY  WRITE 611 00:19:512 0 EOF
2: FLOCK  ADVISORY  WRITE 4242 00:2f:1234 0 EOF
2: -> FLOCK  ADVISORY  WRITE 4343 00:2f:1234 0 EOF
3: FLOCK  ADVISORY  WRITE junk 00:2f:99 0 EOF
4: FLOCK  ADVISORY  WRITE 77 zz:2f:98 0 EOF
5: OFDLCK ADVISORY  READ  -1 00:06:7 0 EOF
6: FLOCK  ADVISORY  WRITE 88 103:02:1234 0 EOF
garbage
`
	for _, tc := range []struct {
		major, minor uint32
		ino          uint64
		want         int
	}{
		{0, 0x2f, 1234, 4242}, // the holder, not the waiter
		{0x103, 2, 1234, 88},  // same inode on another device
		{0, 0x2f, 99, 0},      // unparsable pid
		{0, 0x2f, 98, 0},      // unparsable device
		{0, 0x19, 512, 0},     // a POSIX lock is not a flock
		{0, 0x2f, 1, 0},       // not listed
	} {
		if got := flockHolder(locks, tc.major, tc.minor, tc.ino); got != tc.want {
			t.Errorf("flockHolder(%x:%x:%d) = %d, want %d", tc.major, tc.minor, tc.ino, got, tc.want)
		}
	}
	if pidString(0) != "unknown" || pidString(12) != "12" {
		t.Error("pidString")
	}
}
