package kernel

import (
	"encoding/binary"
	"encoding/hex"
	"testing"

	"github.com/stretchr/testify/require"
)

// §5.3 walb_ctl layout: each field alone lands at its offset, little-endian,
// and touches nothing else.
func TestCtlFieldOffsets(t *testing.T) {
	tests := []struct {
		name  string
		set   func(c *Ctl)
		off   int
		width int
		value uint64
	}{
		{"command", func(c *Ctl) { c.Command = CmdIsFrozen }, 0, 4, 30},
		{"val_int", func(c *Ctl) { c.ValInt = -2 }, 4, 4, 0xfffffffe},
		{"val_u64", func(c *Ctl) { c.ValU64 = 0x0102030405060708 }, 8, 8, 0x0102030405060708},
		{"val_u32", func(c *Ctl) { c.ValU32 = 0xa1b2c3d4 }, 16, 4, 0xa1b2c3d4},
		{"error", func(c *Ctl) { c.Error = -8 }, 20, 4, 0xfffffff8},
		{"u2k.wmajor", func(c *Ctl) { c.U2K.WMajor = 252 }, 24, 4, 252},
		{"u2k.wminor", func(c *Ctl) { c.U2K.WMinor = DynamicMinor }, 28, 4, 0xffffffff},
		{"u2k.lmajor", func(c *Ctl) { c.U2K.LMajor = 8 }, 32, 4, 8},
		{"u2k.lminor", func(c *Ctl) { c.U2K.LMinor = 16 }, 36, 4, 16},
		{"u2k.dmajor", func(c *Ctl) { c.U2K.DMajor = 9 }, 40, 4, 9},
		{"u2k.dminor", func(c *Ctl) { c.U2K.DMinor = 32 }, 44, 4, 32},
		{"u2k.buf_size", func(c *Ctl) { c.U2K.BufSize = 64 }, 48, 8, 64},
		{"u2k.buf", func(c *Ctl) { c.U2K.Buf = 0x7ffe12345678 }, 56, 8, 0x7ffe12345678},
		{"u2k.kbuf", func(c *Ctl) { c.U2K.KBuf = 0xffff888000001000 }, 64, 8, 0xffff888000001000},
		{"k2u.wmajor", func(c *Ctl) { c.K2U.WMajor = 253 }, 72, 4, 253},
		{"k2u.wminor", func(c *Ctl) { c.K2U.WMinor = 6 }, 76, 4, 6},
		{"k2u.lmajor", func(c *Ctl) { c.K2U.LMajor = 7 }, 80, 4, 7},
		{"k2u.lminor", func(c *Ctl) { c.K2U.LMinor = 1 }, 84, 4, 1},
		{"k2u.dmajor", func(c *Ctl) { c.K2U.DMajor = 7 }, 88, 4, 7},
		{"k2u.dminor", func(c *Ctl) { c.K2U.DMinor = 2 }, 92, 4, 2},
		{"k2u.buf_size", func(c *Ctl) { c.K2U.BufSize = 1280 }, 96, 8, 1280},
		{"k2u.buf", func(c *Ctl) { c.K2U.Buf = 0xc000123000 }, 104, 8, 0xc000123000},
		{"k2u.kbuf", func(c *Ctl) { c.K2U.KBuf = 1 }, 112, 8, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c Ctl
			tc.set(&c)
			b := c.Marshal()
			want := make([]byte, CtlSize)
			if tc.width == 4 {
				binary.LittleEndian.PutUint32(want[tc.off:], uint32(tc.value))
			} else {
				binary.LittleEndian.PutUint64(want[tc.off:], tc.value)
			}
			require.Equal(t, want, b[:])

			var back Ctl
			require.NoError(t, back.Unmarshal(want))
			require.Equal(t, c, back)
		})
	}
}

// A START_DEV request as wdevc create-wdev builds it, byte for byte.
func TestCtlGoldenStartDev(t *testing.T) {
	c := Ctl{
		Command: CmdStartDev,
		U2K: CtlData{WMinor: DynamicMinor, LMajor: 8, LMinor: 16, DMajor: 8, DMinor: 32,
			BufSize: 64, Buf: 0x00007ffd_0000_1000},
		K2U: CtlData{BufSize: 64, Buf: 0x00007ffd_0000_2000},
	}
	b := c.Marshal()
	want := "01000000" + "00000000" + "0000000000000000" + "00000000" + "00000000" +
		// u2k
		"00000000" + "ffffffff" + "08000000" + "10000000" + "08000000" + "20000000" +
		"4000000000000000" + "00100000fd7f0000" + "0000000000000000" +
		// k2u
		"00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "00000000" +
		"4000000000000000" + "00200000fd7f0000" + "0000000000000000"
	require.Equal(t, want, hex.EncodeToString(b[:]))
}

func TestCtlUnmarshalSize(t *testing.T) {
	var c Ctl
	for _, n := range []int{0, 1, CtlSize - 1, CtlSize + 1, 2 * CtlSize} {
		require.ErrorIs(t, c.Unmarshal(make([]byte, n)), ErrCtlSize, "%d bytes", n)
	}
}

func BenchmarkCtlMarshalUnmarshal(b *testing.B) {
	c := Ctl{Command: CmdListDev, ValInt: 3, U2K: CtlData{BufSize: 8, Buf: 0x1000}, K2U: CtlData{BufSize: 1280, Buf: 0x2000}}
	var d Ctl
	b.SetBytes(CtlSize)
	b.ReportAllocs()
	for b.Loop() {
		raw := c.Marshal()
		if err := d.Unmarshal(raw[:]); err != nil {
			b.Fatal(err)
		}
	}
}
