package kernel

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// wdevc create-wdev defaults (walb-tools wdevc.cpp).
func TestDefaultStartParam(t *testing.T) {
	p := DefaultStartParam()
	require.Equal(t, StartParam{
		MaxPendingMB: 32, MinPendingMB: 16, QueueStopTimeoutMs: 100, MaxLogpackKB: 32,
		LogFlushIntervalMs: 100, LogFlushIntervalMB: 16, NPackBulk: 128, NIOBulk: 1024,
	}, p)
	require.NoError(t, p.Validate())
	require.Equal(t, 25, MaxDevNameLen)
}

func TestStartParamValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(p *StartParam)
		bad    string // substring of the error; "" means valid
	}{
		{"defaults", func(p *StartParam) {}, ""},
		{"name 25 bytes", func(p *StartParam) { p.Name = strings.Repeat("n", 25) }, ""},
		{"name 26 bytes", func(p *StartParam) { p.Name = strings.Repeat("n", 26) }, "name is 26 bytes"},
		{"name with NUL", func(p *StartParam) { p.Name = "a\x00b" }, "NUL"},
		{"max_pending 2", func(p *StartParam) { p.MaxPendingMB, p.MinPendingMB, p.LogFlushIntervalMB = 2, 1, 1 }, ""},
		{"max_pending 1", func(p *StartParam) { p.MaxPendingMB, p.MinPendingMB, p.LogFlushIntervalMB = 1, 1, 0 }, "max_pending_mb 1"},
		{"max_pending 16384", func(p *StartParam) { p.MaxPendingMB = 16384 }, ""},
		{"max_pending 16385", func(p *StartParam) { p.MaxPendingMB = 16385 }, "max_pending_mb 16385"},
		{"min_pending 0", func(p *StartParam) { p.MinPendingMB = 0 }, "min_pending_mb 0"},
		{"min_pending = max", func(p *StartParam) { p.MinPendingMB = 32 }, "min_pending_mb 32"},
		{"min_pending = max-1", func(p *StartParam) { p.MinPendingMB = 31 }, ""},
		{"queue stop 0", func(p *StartParam) { p.QueueStopTimeoutMs = 0 }, "queue_stop_timeout_ms"},
		{"flush mb = max/2", func(p *StartParam) { p.LogFlushIntervalMB = 16 }, ""},
		{"flush mb > max/2", func(p *StartParam) { p.LogFlushIntervalMB = 17 }, "2*log_flush_interval_mb (34)"},
		// The driver computes 2*v in 32 bits and would accept this.
		{"flush mb wraps in C", func(p *StartParam) { p.LogFlushIntervalMB = 0x80000000 }, "2*log_flush_interval_mb (4294967296)"},
		{"flush ms 0 allowed", func(p *StartParam) { p.LogFlushIntervalMs = 0 }, ""},
		{"max_logpack 0 allowed", func(p *StartParam) { p.MaxLogpackKB = 0 }, ""},
		{"n_pack_bulk 0", func(p *StartParam) { p.NPackBulk = 0 }, "n_pack_bulk"},
		{"n_io_bulk 0", func(p *StartParam) { p.NIOBulk = 0 }, "n_io_bulk"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := DefaultStartParam()
			tc.modify(&p)
			err := p.Validate()
			if tc.bad == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalidStartParam)
			require.ErrorContains(t, err, tc.bad)
		})
	}
}

// Validate lists every violated rule at once.
func TestStartParamValidateReportsAll(t *testing.T) {
	err := StartParam{}.Validate()
	require.ErrorIs(t, err, ErrInvalidStartParam)
	for _, s := range []string{"max_pending_mb", "min_pending_mb", "queue_stop_timeout_ms", "n_pack_bulk", "n_io_bulk"} {
		require.ErrorContains(t, err, s)
	}
}

// §5.3 start parameter layout.
func TestStartParamLayout(t *testing.T) {
	p := StartParam{
		Name: "vol0", MaxPendingMB: 0x01020304, MinPendingMB: 0x11121314, QueueStopTimeoutMs: 0x21222324,
		MaxLogpackKB: 0x31323334, LogFlushIntervalMs: 0x41424344, LogFlushIntervalMB: 0x51525354,
		NPackBulk: 0x61626364, NIOBulk: 0x71727374,
	}
	b, err := p.Marshal()
	require.NoError(t, err)
	require.Equal(t, "vol0", string(b[:4]))
	require.Equal(t, make([]byte, 28), b[4:32], "name is NUL-padded")
	for i, want := range []uint32{0x01020304, 0x11121314, 0x21222324, 0x31323334, 0x41424344, 0x51525354, 0x61626364, 0x71727374} {
		require.Equal(t, want, binary.LittleEndian.Uint32(b[32+4*i:]), "field at %d", 32+4*i)
	}
	back, err := UnmarshalStartParam(b[:])
	require.NoError(t, err)
	require.Equal(t, p, back)
}

func TestStartParamNameEdges(t *testing.T) {
	// 31 bytes is the most a C string of 32 bytes holds; Marshal allows it
	// even though Validate does not (the driver's own check would).
	p := DefaultStartParam()
	p.Name = strings.Repeat("x", 31)
	b, err := p.Marshal()
	require.NoError(t, err)
	require.Zero(t, b[31])

	p.Name = strings.Repeat("x", 32)
	_, err = p.Marshal()
	require.ErrorIs(t, err, ErrInvalidStartParam)
	p.Name = "a\x00"
	_, err = p.Marshal()
	require.ErrorIs(t, err, ErrInvalidStartParam)

	// A name field without NUL decodes whole and fails Validate.
	raw := make([]byte, StartParamSize)
	copy(raw, strings.Repeat("y", 32))
	q, err := UnmarshalStartParam(raw)
	require.NoError(t, err)
	require.Len(t, q.Name, 32)
	require.ErrorIs(t, q.Validate(), ErrInvalidStartParam)

	_, err = UnmarshalStartParam(make([]byte, 63))
	require.ErrorIs(t, err, ErrStartParamSize)
}

func TestDiskData(t *testing.T) {
	d := DiskData{DiskName: "walb/vol0", Major: 252, Minor: 6}
	b := d.Marshal()
	require.Equal(t, "walb/vol0", string(b[:9]))
	require.Equal(t, make([]byte, 23), b[9:32])
	require.Equal(t, uint32(252), binary.LittleEndian.Uint32(b[32:]))
	require.Equal(t, uint32(6), binary.LittleEndian.Uint32(b[36:]))
	back, err := UnmarshalDiskData(b[:])
	require.NoError(t, err)
	require.Equal(t, d, back)
	require.Equal(t, "vol0", back.Name())
	require.Equal(t, "/dev/walb/vol0", back.Path())

	// No NUL: the last byte is treated as one, like walb-tools' list.
	raw := make([]byte, DiskDataSize)
	copy(raw, strings.Repeat("z", 32))
	back, err = UnmarshalDiskData(raw)
	require.NoError(t, err)
	require.Len(t, back.DiskName, 31)

	_, err = UnmarshalDiskData(raw[:39])
	require.ErrorIs(t, err, ErrDiskDataSize)
}

func TestSysfsDir(t *testing.T) {
	require.Equal(t, "/sys/block/walb!0", SysfsDir("0"))
	require.Equal(t, "/sys/block/walb!vol0", SysfsDir("vol0"))
	require.Equal(t, "/sys/block/walb!a!b", SysfsDir("a/b"))
}
