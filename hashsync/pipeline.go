package hashsync

import (
	"bytes"
	"context"
	"io"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/pkg/errors"
	"github.com/walb-go/walb/wdiff"
)

// job is one chunk moving through a scan pipeline. Its buffers stay with
// it, so a pipeline's memory is fixed by its depth.
type job struct {
	idx     int64
	off     int64
	n       int
	buf     []byte // the chunk as read
	want    Hash   // data side: the old image's hash
	bulkEnd bool   // data side: last chunk of a Hashes message
	err     error
	done    chan struct{}

	// Results.
	got    Hash
	differ bool
	zero   bool
	codec  wdiff.Codec
	stored []byte // compressed chunk, or buf itself
	csum   uint32
	out    []byte // compression buffer, allocated on first use
}

// pipeline runs one side's scan: a feeder goroutine fills jobs in chunk
// order, workers process them concurrently, and the calling goroutine
// consumes them in order. At most depth jobs exist, so reading and hashing
// run ahead of the consumer (network, disk) by at most depth chunks.
type pipeline struct {
	depth, workers int
	chunkSize      int
	// feed fills j with the next chunk; it returns false when there is
	// none. It runs on the feeder goroutine and may block (it must honour
	// ctx).
	feed func(ctx context.Context, j *job) (bool, error)
	// process does a job's work on a worker goroutine; failures go to
	// j.err.
	process func(ctx context.Context, j *job)
	// consume takes finished jobs in order on the calling goroutine.
	consume func(j *job) error
}

// run returns the first error of feed, process or consume, or ctx's.
func (p *pipeline) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	free := make(chan *job, p.depth)
	work := make(chan *job, p.depth)
	order := make(chan *job, p.depth)
	for range p.depth {
		free <- &job{buf: make([]byte, p.chunkSize), done: make(chan struct{}, 1)}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(order)
		defer close(work)
		for {
			var j *job
			select {
			case j = <-free:
			case <-ctx.Done():
				return
			}
			j.err, j.differ, j.zero, j.bulkEnd = nil, false, false, false
			more, err := p.feed(ctx, j)
			if err != nil {
				// Reported in order, after the jobs already fed.
				j.err = err
				j.done <- struct{}{}
				order <- j
				return
			}
			if !more {
				return
			}
			order <- j
			work <- j
		}
	})
	for range p.workers {
		wg.Go(func() {
			for j := range work {
				if err := ctx.Err(); err != nil {
					j.err = err
				} else {
					p.process(ctx, j)
				}
				j.done <- struct{}{}
			}
		})
	}
	var err error
	for j := range order {
		<-j.done
		if err == nil {
			err = j.err
			if err == nil {
				err = p.consume(j)
			}
			if err != nil {
				cancel()
			}
		}
		free <- j
	}
	wg.Wait()
	if err == nil {
		// The feeder also stops on cancellation.
		err = ctx.Err()
	}
	return err
}

// defaultWorkers is the number of reading/hashing goroutines per side:
// enough to keep a few reads in flight on a device and to use the CPUs.
func defaultWorkers(n int) int {
	if n > 0 {
		return n
	}
	return min(max(runtime.GOMAXPROCS(0), 2), 8)
}

// depthFor bounds the chunks in flight: each worker has one being
// processed and one finished waiting, plus two for the consumer.
func depthFor(workers int) int { return 2*workers + 2 }

// readChunk reads exactly len(buf) bytes at off.
func readChunk(img io.ReaderAt, buf []byte, off int64) error {
	n, err := img.ReadAt(buf, off)
	if n == len(buf) {
		return nil
	}
	if err == nil || err == io.EOF {
		return errors.Wrapf(ErrShortImage, "read at %d: %d of %d bytes", off, n, len(buf))
	}
	return errors.WithMessagef(err, "hashsync: read %d bytes at %d", len(buf), off)
}

var zeros [64 << 10]byte

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// limiter spreads reads over time so that they average at most rate
// bytes per second. Each read reserves len/rate seconds of a shared
// timeline and waits for its slot; unused time is not saved up, so there
// is no burst after an idle period.
type limiter struct {
	rate  float64
	mu    sync.Mutex
	next  time.Time
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error
}

func newLimiter(bytesPerSec int64) *limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	return &limiter{rate: float64(bytesPerSec), now: time.Now, sleep: sleepCtx}
}

func (l *limiter) wait(ctx context.Context, n int) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	now := l.now()
	if l.next.Before(now) {
		l.next = now
	}
	at := l.next
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	l.mu.Unlock()
	return l.sleep(ctx, at.Sub(now))
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// interrupt makes a blocked Read or Write on x return when ctx ends, for
// streams with deadlines (net.Conn and the like): a read at once, a write
// after abortTimeout, so that a message being written while the peer reads
// is not cut in the middle and an Error message can follow it. Other
// streams are interrupted only by their owner closing them. The returned
// function stops watching; once it returns, no deadline will be set any
// more.
func interrupt(ctx context.Context, x any, read bool) (stop func()) {
	var set func(time.Time) error
	if read {
		if d, ok := x.(interface{ SetReadDeadline(time.Time) error }); ok {
			set = d.SetReadDeadline
		}
	} else if d, ok := x.(interface{ SetWriteDeadline(time.Time) error }); ok {
		set = d.SetWriteDeadline
	}
	if set == nil {
		return func() {}
	}
	var (
		mu      sync.Mutex
		stopped bool
	)
	stopAfter := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		if read {
			_ = set(time.Unix(1, 0))
		} else {
			_ = set(time.Now().Add(abortTimeout))
		}
	})
	return func() {
		stopAfter()
		mu.Lock()
		stopped = true
		mu.Unlock()
	}
}

// abortTimeout bounds a write in progress at a cancellation, the write of
// an Error message, and how long a failed side keeps draining its input so
// that a peer blocked on writing to it can read that message.
const abortTimeout = time.Second

// sendAbort tells the peer why this side gives up: err, or the
// cancellation's cause if ctx ended. The message goes out under a fresh
// short deadline; on a stream without deadlines it is only attempted when
// ctx is live (the peer is presumably reading), as it could block forever.
// The interrupt watching w must be stopped first.
func sendAbort(ctx context.Context, w any, mw *msgWriter, err error) {
	canceled := ctx.Err() != nil
	if c := context.Cause(ctx); canceled && c != nil {
		err = c
	}
	if errors.Is(err, ErrRemote) {
		// The peer knows.
		return
	}
	if d, ok := w.(interface{ SetWriteDeadline(time.Time) error }); ok {
		_ = d.SetWriteDeadline(time.Now().Add(abortTimeout))
		defer func() { _ = d.SetWriteDeadline(time.Time{}) }()
	} else if canceled {
		return
	}
	mw.abort(err)
}

// linger reads and discards r, so that a peer blocked on writing to this
// side gets to read the Error message this side is sending, until r ends or
// fails or stop is called. Only streams with deadlines can be stopped; for
// others linger does nothing.
func linger(r io.Reader) (stop func()) {
	d, ok := r.(interface{ SetReadDeadline(time.Time) error })
	if !ok {
		return func() {}
	}
	_ = d.SetReadDeadline(time.Now().Add(2 * abortTimeout))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(io.Discard, r)
	}()
	return func() {
		_ = d.SetReadDeadline(time.Unix(1, 0))
		<-done
		_ = d.SetReadDeadline(time.Time{})
	}
}

// ctxErr reports an I/O error caused by interrupt (an expired deadline)
// as the context's error. Other errors keep their identity, so that a peer's
// Error message is not hidden by a cancellation that followed it.
func ctxErr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return errors.Wrapf(ctx.Err(), "hashsync: %v", err)
	}
	return err
}
