package wdiff

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// Property: the resolved pieces give every block the value of the latest
// extent covering it, pieces are sorted, disjoint, never span two chunks,
// and no piece is empty.
func TestResolveExtentsMatchesModel(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for iter := 0; iter < 500; iter++ {
		const space = 300
		model := make([]int, space) // chunk seq + 1 covering each block, 0 = none
		var exts []Extent
		max := uint32(r.IntN(40))
		for k := 0; k < r.IntN(30); k++ {
			addr := uint64(r.IntN(space - 1))
			blocks := uint32(1 + r.IntN(min(80, space-int(addr))))
			e := Extent{Addr: addr, Blocks: blocks, Flags: Flags(r.IntN(3) * 2), Src: int64(k)}
			before := len(exts)
			exts = AppendExtent(exts, e, max)
			for _, c := range exts[before:] {
				if max > 0 {
					require.LessOrEqual(t, c.Blocks, max)
				}
				for b := c.Addr; b < c.End(); b++ {
					model[b] = int(c.Seq) + 1
				}
			}
		}
		byseq := map[uint32]Extent{}
		for _, e := range exts {
			byseq[e.Seq] = e
		}
		got := make([]int, space)
		var prevEnd uint64
		require.NoError(t, ResolveExtents(exts, func(p Extent) error {
			require.Positive(t, p.Blocks)
			require.GreaterOrEqual(t, p.Addr, prevEnd)
			prevEnd = p.End()
			src := byseq[p.Seq]
			require.GreaterOrEqual(t, p.Addr, src.Addr)
			require.LessOrEqual(t, p.End(), src.End())
			require.Equal(t, src.SrcOff+uint32(p.Addr-src.Addr), p.SrcOff)
			require.Equal(t, src.Flags, p.Flags)
			for b := p.Addr; b < p.End(); b++ {
				got[b] = int(p.Seq) + 1
			}
			return nil
		}))
		require.Equal(t, model, got)
	}
}

func TestResolveExtentsCutsLikeWalbTools(t *testing.T) {
	// An old write [0,10) cut by a later [4,6) leaves two pieces; a chunked
	// IO keeps its chunk boundary.
	var exts []Extent
	exts = AppendExtent(exts, Extent{Addr: 0, Blocks: 10}, 0)
	exts = AppendExtent(exts, Extent{Addr: 4, Blocks: 2}, 0)
	exts = AppendExtent(exts, Extent{Addr: 20, Blocks: 10}, 4)
	var got [][2]uint64
	require.NoError(t, ResolveExtents(exts, func(p Extent) error {
		got = append(got, [2]uint64{p.Addr, uint64(p.Blocks)})
		return nil
	}))
	require.Equal(t, [][2]uint64{{0, 4}, {4, 2}, {6, 4}, {20, 4}, {24, 4}, {28, 2}}, got)
}
