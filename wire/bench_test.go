package wire

import (
	"context"
	"crypto/tls"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

// benchStream measures one bulk stream over loopback: the sender sends
// b.N chunks of chunk bytes, the receiver drains them with Next.
func benchStream(b *testing.B, sopts, copts *Options, chunk int, useWrite bool) {
	ctx := context.Background()
	l, err := Listen(ctx, "127.0.0.1:0", "srv", sopts)
	require.NoError(b, err)
	defer l.Close()
	done := make(chan int64, 1)
	go func() {
		nc, err := l.Accept()
		if err != nil {
			done <- -1
			return
		}
		s, err := l.Handshake(ctx, nc, nil)
		if err != nil {
			done <- -1
			return
		}
		defer s.Close()
		r := s.NewStreamReader(ctx)
		for {
			if _, err := r.Next(); err != nil {
				if err != io.EOF {
					done <- -1
					return
				}
				break
			}
		}
		done <- r.Total()
	}()
	c, err := Dial(ctx, l.Addr().String(), "cli", "bench", copts)
	require.NoError(b, err)
	defer c.Close()
	data := randomBytes(chunk, 7)
	w := c.NewStreamWriter(ctx, chunk)
	b.SetBytes(int64(chunk))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if useWrite {
			_, err = w.Write(data)
		} else {
			err = w.Send(data)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	require.NoError(b, w.Close())
	total := <-done
	b.StopTimer()
	require.Equal(b, int64(b.N)*int64(chunk), total)
}

func BenchmarkStreamSend1M(b *testing.B)  { benchStream(b, nil, nil, 1<<20, false) }
func BenchmarkStreamSend64K(b *testing.B) { benchStream(b, nil, nil, 64<<10, false) }
func BenchmarkStreamSend4K(b *testing.B)  { benchStream(b, nil, nil, 4<<10, false) }
func BenchmarkStreamWrite4M(b *testing.B) { benchStream(b, nil, nil, 4<<20, true) }

func BenchmarkStreamTLS1M(b *testing.B) {
	t := &testing.T{}
	cert, pool := selfSigned(t)
	benchStream(b,
		&Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}},
		&Options{TLS: &tls.Config{RootCAs: pool}}, 1<<20, false)
}

// BenchmarkRoundTrip measures a small request/reply exchange on an open
// connection (a u64 each way).
func BenchmarkRoundTrip(b *testing.B) {
	ctx := context.Background()
	l, err := Listen(ctx, "127.0.0.1:0", "srv", nil)
	require.NoError(b, err)
	defer l.Close()
	go func() {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		s, err := l.Handshake(ctx, nc, nil)
		if err != nil {
			return
		}
		defer s.Close()
		for {
			v, err := s.RecvU64(ctx)
			if err != nil {
				return
			}
			if err := s.SendU64(ctx, v+1); err != nil {
				return
			}
		}
	}()
	c, err := Dial(ctx, l.Addr().String(), "cli", "bench", nil)
	require.NoError(b, err)
	defer c.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if err := c.SendU64(ctx, uint64(i)); err != nil {
			b.Fatal(err)
		}
		if _, err := c.RecvU64(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
