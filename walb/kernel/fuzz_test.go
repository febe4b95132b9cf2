package kernel

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Every 120-byte string is a walb_ctl and encodes back to itself; any other
// length is refused.
func FuzzCtlUnmarshal(f *testing.F) {
	start := Ctl{Command: CmdStartDev, U2K: CtlData{WMinor: DynamicMinor, LMajor: 8, LMinor: 16, DMajor: 8, DMinor: 32, BufSize: 64, Buf: 0x7ffd00001000},
		K2U: CtlData{BufSize: 64, Buf: 0x7ffd00002000}}
	reply := Ctl{Command: CmdListDev, ValInt: 3, Error: -4, K2U: CtlData{WMajor: 252, BufSize: 1280, Buf: 0xc000010000, KBuf: 0xffff888000001000}}
	for _, c := range []Ctl{{}, start, reply} {
		raw := c.Marshal()
		f.Add(raw[:])
	}
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, CtlSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c Ctl
		err := c.Unmarshal(b)
		if len(b) != CtlSize {
			require.ErrorIs(t, err, ErrCtlSize)
			return
		}
		require.NoError(t, err)
		back := c.Marshal()
		require.Equal(t, b, back[:])
	})
}

// ParseLsids never panics, and what it accepts prints back to text that
// parses to the same set and passes its own checks on round trips.
func FuzzParseLsids(f *testing.F) {
	f.Add(driverLsids)
	f.Add("latest 10\nsubmitted 9\nflush 8\ncompleted 8\npermanent 7\nwritten 6\nprev_written 5\noldest 4\n")
	f.Add(strings.ReplaceAll(driverLsids, "\n", "\r\n"))
	f.Add("latest 1 2\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, text string) {
		s, err := ParseLsids(strings.NewReader(text))
		if err != nil {
			return
		}
		back, err := ParseLsids(strings.NewReader(s.String()))
		require.NoError(t, err)
		require.Equal(t, s, back)
	})
}
