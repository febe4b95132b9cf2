package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/checksum"
	"github.com/walb-go/walb/wlog"
)

// Every generated log uses the same device identity, so a run is
// reproducible byte for byte.
const (
	benchPBS      = 4096
	benchSalt     = 0x5eed1e55
	packDataBytes = 1 << 20 // a pack closes before its data would pass this
	blockBytes    = 4096    // the unit of addresses, sizes and data patterns
	blockLB       = blockBytes / wlog.LogicalBlockSize
)

var benchUUID = wlog.UUID{0x77, 0x61, 0x6c, 0x62, 0x2d, 0x62, 0x65, 0x6e, 0x63, 0x68, 0x2d, 0x75, 0x75, 0x69, 0x64, 0x01}

// pattern yields the address and length (in 4 KiB blocks) of the next IO
// on a device of n blocks.
type pattern interface {
	next(rng *rand.Rand) (block, blocks uint64)
}

// workload is a named write pattern.
type workload struct {
	name  string
	about string // completes "N MiB of ..." in the report
	newAt func(deviceBlocks uint64) pattern
}

var workloads = []workload{
	{
		name:  "random4k",
		about: "4 KiB writes at random 4 KiB-aligned offsets",
		newAt: func(n uint64) pattern { return randomBlocks{n: n} },
	},
	{
		name:  "seqmix",
		about: "mostly sequential 4-64 KiB writes (runs of sequential IOs, a jump to a random offset after 1 IO in 16)",
		newAt: func(n uint64) pattern { return &seqMix{n: n} },
	},
}

type randomBlocks struct{ n uint64 }

func (p randomBlocks) next(rng *rand.Rand) (uint64, uint64) { return rng.Uint64N(p.n), 1 }

type seqMix struct{ n, pos uint64 }

func (p *seqMix) next(rng *rand.Rand) (uint64, uint64) {
	k := min(1+rng.Uint64N(16), p.n)
	if rng.IntN(16) == 0 || p.pos+k > p.n {
		p.pos = rng.Uint64N(p.n - k + 1)
	}
	at := p.pos
	p.pos += k
	return at, k
}

// logInfo describes a generated wlog.
type logInfo struct {
	path               string
	fileBytes          int64
	beginLsid, endLsid uint64
	ios, zeroIOs       int
	discards           int
}

func (l logInfo) String() string {
	return fmt.Sprintf("%s: %s, lsid [%d, %d), %d IOs (%d all-zero), %d discards",
		l.path, mb(l.fileBytes), l.beginLsid, l.endLsid, l.ios, l.zeroIOs, l.discards)
}

// genLog writes a wlog of dataBytes of normal IOs following w's pattern over
// a device of deviceBytes, starting at beginLsid. Everything derives from
// seed. The data of every 4 KiB block is half random bytes and half a
// repeated 8-byte word (so general-purpose codecs halve it); one IO in 64 is
// all zeros, and one in 256 is followed by a discard of the same size at a
// random position. The file is streamed out pack by pack and synced.
func genLog(path string, w workload, deviceBytes, dataBytes int64, seed, beginLsid uint64) (logInfo, error) {
	info := logInfo{path: path, beginLsid: beginLsid}
	if deviceBytes < blockBytes || deviceBytes%blockBytes != 0 || dataBytes%blockBytes != 0 {
		return info, errors.Errorf("bench: device %d and data %d bytes must be multiples of %d", deviceBytes, dataBytes, blockBytes)
	}
	f, err := os.Create(path)
	if err != nil {
		return info, errors.Wrap(err, "bench: create wlog")
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	lw, err := wlog.NewWriter(bw, wlog.FileHeader{
		Salt: benchSalt, PBS: benchPBS, UUID: benchUUID, BeginLsid: beginLsid, EndLsid: wlog.InvalidLsid,
	})
	if err != nil {
		return info, err
	}
	g := dataGen{rng: rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)), src: rand.NewChaCha8(seedBytes(seed))}
	devBlocks := uint64(deviceBytes / blockBytes)
	pat := w.newAt(devBlocks)
	ph := wlog.NewPackHeader(benchPBS, lw.NextLsid())
	data := make([]byte, 0, packDataBytes)
	flush := func() error {
		if len(ph.Records) == 0 {
			return nil
		}
		if err := lw.WritePack(ph, data); err != nil {
			return err
		}
		ph.Reset(lw.NextLsid())
		data = data[:0]
		return nil
	}
	for left := uint64(dataBytes / blockBytes); left > 0; {
		at, n := pat.next(g.rng)
		n = min(n, left)
		pbs := n * blockBytes / benchPBS
		if ph.IsFull() || len(data)+int(n*blockBytes) > packDataBytes || uint64(ph.TotalIOSize)+pbs > wlog.MaxTotalIOSize {
			if err := flush(); err != nil {
				return info, err
			}
		}
		start := len(data)
		data = data[:start+int(n*blockBytes)]
		zero := g.rng.IntN(64) == 0
		g.fill(data[start:], at, zero)
		csum := checksum.Sum(data[start:], benchSalt)
		if err := ph.AddNormal(at*blockLB, uint32(n*blockLB), csum, 0); err != nil {
			return info, errors.Wrap(err, "bench: add io")
		}
		info.ios++
		if zero {
			info.zeroIOs++
		}
		left -= n
		if g.rng.IntN(256) == 0 {
			dat := g.rng.Uint64N(devBlocks - n + 1)
			if ph.IsFull() {
				if err := flush(); err != nil {
					return info, err
				}
			}
			if err := ph.AddDiscard(dat*blockLB, uint32(n*blockLB)); err != nil {
				return info, errors.Wrap(err, "bench: add discard")
			}
			info.discards++
		}
	}
	if err := flush(); err != nil {
		return info, err
	}
	if err := lw.Close(); err != nil {
		return info, err
	}
	if err := bw.Flush(); err != nil {
		return info, errors.Wrap(err, "bench: write wlog")
	}
	// Synced so that writeback of the input does not run during the
	// measurements that follow.
	if err := f.Sync(); err != nil {
		return info, errors.Wrap(err, "bench: sync wlog")
	}
	info.endLsid = lw.NextLsid()
	st, err := f.Stat()
	if err != nil {
		return info, errors.Wrap(err, "bench: stat wlog")
	}
	info.fileBytes = st.Size()
	return info, f.Close()
}

// dataGen makes block contents: decisions from rng, random bytes from src
// (ChaCha8 fills buffers an order of magnitude faster than drawing words).
type dataGen struct {
	rng *rand.Rand
	src *rand.ChaCha8
}

func (g *dataGen) fill(b []byte, block uint64, zero bool) {
	if zero {
		clear(b)
		return
	}
	for i := 0; i < len(b); i += blockBytes {
		blk := b[i : i+blockBytes]
		half := blk[:blockBytes/2]
		_, _ = g.src.Read(half) // never fails
		word := block + uint64(i/blockBytes)
		rest := blk[blockBytes/2:]
		for j := 0; j < len(rest); j += 8 {
			binary.LittleEndian.PutUint64(rest[j:], word)
		}
	}
}

func seedBytes(seed uint64) [32]byte {
	var s [32]byte
	for i := range 4 {
		binary.LittleEndian.PutUint64(s[8*i:], seed*0x9e3779b97f4a7c15+uint64(i))
	}
	return s
}
