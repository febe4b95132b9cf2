package nbd

import (
	"bufio"
	"io"
	"log/slog"
	"math/bits"
	"net"
	"sync"

	"github.com/pkg/errors"
)

// The transmission phase. One goroutine reads requests in order (it must:
// a WRITE's payload follows its header), validates each against the table
// below and hands it to its own goroutine; at most Options.MaxInFlight
// requests (and a bounded number of payload bytes) are in flight per
// connection. Replies are simple replies, written whole under a mutex, in
// completion order.
//
//	command       flags allowed    needs flag           read-only  out of range  length bound
//	------------  ---------------  -------------------  ---------  ------------  ------------
//	READ          FUA (ignored)    -                    allowed    EINVAL        max block size
//	WRITE         FUA              -                    EPERM      ENOSPC        max block size
//	FLUSH         FUA (ignored)    SEND_FLUSH           allowed    (not checked) -
//	TRIM          FUA              SEND_TRIM            EPERM      EINVAL        -
//	WRITE_ZEROES  FUA, NO_HOLE     SEND_WRITE_ZEROES    EPERM      ENOSPC        -
//	DISC          -                -                    -          -             -
//	other         -                -                    -          -             EINVAL
//
// FUA is accepted only when SEND_FUA was advertised; any other flag, or a
// command whose flag was not advertised, gets EINVAL. A WRITE longer than the
// maximum block size is answered with EINVAL after its payload is skipped,
// unless the payload is 32 MiB or more, which the protocol lets a server
// treat as a denial of service: the connection is then closed.

type commandSpec struct {
	allowedFlags uint16            // command flags the client may set
	needs        TransmissionFlags // transmission flag that must have been advertised
	writes       bool              // changes the export: EPERM on a read-only one
	payload      bool              // a payload of length bytes follows the header
	boundedLen   bool              // length limited by the maximum block size
	checkRange   bool              // offset and length must lie within the export
	rangeErr     Errno             // error for a range past the end
	run          func(s *session, r request, buf []byte) Errno
}

var commandTable = map[uint16]commandSpec{
	cmdRead:        {allowedFlags: cmdFlagFUA, boundedLen: true, checkRange: true, rangeErr: EINVAL, run: (*session).doRead},
	cmdWrite:       {allowedFlags: cmdFlagFUA, writes: true, payload: true, boundedLen: true, checkRange: true, rangeErr: ENOSPC, run: (*session).doWrite},
	cmdFlush:       {allowedFlags: cmdFlagFUA, needs: FlagSendFlush, run: (*session).doFlush},
	cmdTrim:        {allowedFlags: cmdFlagFUA, needs: FlagSendTrim, writes: true, checkRange: true, rangeErr: EINVAL, run: (*session).doTrim},
	cmdWriteZeroes: {allowedFlags: cmdFlagFUA | cmdFlagNoHole, needs: FlagSendWriteZeroes, writes: true, checkRange: true, rangeErr: ENOSPC, run: (*session).doWriteZeroes},
}

// session is one connection in transmission.
type session struct {
	c       *serverConn
	log     *slog.Logger
	rw      net.Conn
	br      *bufio.Reader
	exp     *export
	backend Backend
	size    uint64
	flags   TransmissionFlags
	maxLen  uint32

	limit *inflightLimiter
	wg    sync.WaitGroup

	wmu  sync.Mutex
	werr error // sticky: once a reply fails the connection is dead
}

func newSession(c *serverConn, n *negotiation, e *export) *session {
	maxLen := uint32(c.srv.opts.MaxRequestSize)
	return &session{
		c:       c,
		log:     c.log.With("export", e.name),
		rw:      n.rw,
		br:      n.br,
		exp:     e,
		backend: e.backend,
		size:    uint64(n.size),
		flags:   e.flags,
		maxLen:  maxLen,
		// Payload bytes in flight are bounded too, so a connection holds
		// at most a few maximum-size buffers however many requests it has.
		limit: newInflightLimiter(c.srv.opts.MaxInFlight, 2*int64(maxLen)),
	}
}

// run reads and dispatches requests until the client disconnects, the
// connection fails or the server stops it; in-flight requests always finish
// before it returns.
func (s *session) run() error {
	defer s.wg.Wait()
	var hdr [requestHeaderSize]byte
	for {
		if _, err := io.ReadFull(s.br, hdr[:]); err != nil {
			switch {
			case s.c.isStopping():
				s.log.Debug("nbd: stopped reading requests for shutdown")
				return nil
			case err == io.EOF:
				// A close between requests is a hard disconnect by
				// the client, not a server error.
				s.log.Debug("nbd: client closed the connection without NBD_CMD_DISC")
				return nil
			}
			return errors.Wrap(err, "nbd: read request")
		}
		r, err := decodeRequest(hdr[:])
		if err != nil {
			return err
		}
		if r.typ == cmdDisc {
			s.log.Debug("nbd: NBD_CMD_DISC")
			return nil
		}
		if err := s.dispatch(r); err != nil {
			return err
		}
	}
}

// dispatch validates r, reads its payload and starts it. It returns an error
// only when the connection must be closed.
func (s *session) dispatch(r request) error {
	spec, known := commandTable[r.typ]
	errno := s.validate(r, spec, known)
	if errno != 0 {
		if spec.payload {
			if spec.boundedLen && r.length > s.maxLen && r.length >= dosPayloadThreshold {
				return errors.Wrapf(ErrRequestTooLarge, "%s of %d bytes (maximum %d)", commandName(r.typ), r.length, s.maxLen)
			}
			if _, err := io.CopyN(io.Discard, s.br, int64(r.length)); err != nil {
				return errors.Wrapf(err, "nbd: skip payload of rejected %s", commandName(r.typ))
			}
		}
		s.log.Debug("nbd: request rejected", "cmd", commandName(r.typ), "flags", r.flags,
			"offset", r.offset, "length", r.length, "err", errno)
		return s.reply(r.handle, errno, nil)
	}

	var bufLen int64
	if r.typ == cmdRead || spec.payload {
		bufLen = int64(r.length)
	}
	s.limit.acquire(bufLen)
	var buf []byte
	if bufLen > 0 {
		buf = getBuffer(int(bufLen))
	}
	if spec.payload {
		if _, err := io.ReadFull(s.br, buf); err != nil {
			putBuffer(buf)
			s.limit.release(bufLen)
			return errors.Wrapf(err, "nbd: read payload of %s", commandName(r.typ))
		}
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.limit.release(bufLen)
		defer putBuffer(buf)
		errno := spec.run(s, r, buf)
		if r.typ != cmdRead || errno != 0 {
			_ = s.reply(r.handle, errno, nil)
		}
	}()
	return nil
}

// validate applies the command table; 0 means the request may run.
func (s *session) validate(r request, spec commandSpec, known bool) Errno {
	if !known {
		return EINVAL
	}
	allowed := spec.allowedFlags
	if s.flags&FlagSendFUA == 0 {
		allowed &^= cmdFlagFUA
	}
	if r.flags&^allowed != 0 {
		return EINVAL
	}
	if spec.writes && s.flags&FlagReadOnly != 0 {
		return EPERM
	}
	if spec.needs != 0 && s.flags&spec.needs == 0 {
		return EINVAL
	}
	if spec.boundedLen && r.length > s.maxLen {
		return EINVAL
	}
	if spec.checkRange && (r.offset > s.size || uint64(r.length) > s.size-r.offset) {
		return spec.rangeErr
	}
	return 0
}

// reply sends a simple reply, with data only for a successful READ.
func (s *session) reply(handle uint64, errno Errno, data []byte) error {
	var hdr [simpleReplyHeaderSize]byte
	encodeSimpleReply(hdr[:], errno, handle)
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.werr != nil {
		return s.werr
	}
	bufs := net.Buffers{hdr[:]}
	if len(data) > 0 {
		bufs = append(bufs, data)
	}
	if _, err := bufs.WriteTo(s.rw); err != nil {
		s.werr = errors.Wrap(err, "nbd: send reply")
		// The reader may be blocked on a healthy-looking socket; closing
		// wakes it so the session ends.
		_ = s.c.raw.Close()
		return s.werr
	}
	return nil
}

// backendErr logs a backend failure and maps it to a protocol error.
func (s *session) backendErr(op string, off uint64, length uint32, err error) Errno {
	errno := errnoFor(err)
	s.log.Error("nbd: backend error", "cmd", op, "offset", off, "length", length, "err", err, "errno", uint32(errno))
	return errno
}

func (s *session) doRead(r request, buf []byte) Errno {
	n, err := s.backend.ReadAt(buf, int64(r.offset))
	if n == len(buf) && err == io.EOF {
		err = nil
	}
	if err == nil && n < len(buf) {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return s.backendErr("READ", r.offset, r.length, err)
	}
	if err := s.reply(r.handle, 0, buf); err != nil {
		s.log.Debug("nbd: read reply failed", "err", err)
	}
	return 0
}

func (s *session) doWrite(r request, buf []byte) Errno {
	var n int
	var err error
	if r.flags&cmdFlagFUA != 0 {
		if fw, ok := s.backend.(FUAWriter); ok {
			n, err = fw.WriteAtFUA(buf, int64(r.offset))
		} else {
			n, err = s.backend.WriteAt(buf, int64(r.offset))
			if err == nil {
				err = s.flush()
			}
		}
	} else {
		n, err = s.backend.WriteAt(buf, int64(r.offset))
	}
	if err == nil && n < len(buf) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return s.backendErr("WRITE", r.offset, r.length, err)
	}
	return 0
}

func (s *session) doFlush(r request, _ []byte) Errno {
	if err := s.flush(); err != nil {
		return s.backendErr("FLUSH", r.offset, r.length, err)
	}
	return 0
}

func (s *session) doTrim(r request, _ []byte) Errno {
	t := s.backend.(Trimmer) // SEND_TRIM is advertised only for Trimmers
	err := t.Trim(int64(r.offset), int64(r.length))
	if err == nil && r.flags&cmdFlagFUA != 0 {
		err = s.flush()
	}
	if err != nil {
		return s.backendErr("TRIM", r.offset, r.length, err)
	}
	return 0
}

func (s *session) doWriteZeroes(r request, _ []byte) Errno {
	err := writeZeroes(s.backend, int64(r.offset), int64(r.length), r.flags&cmdFlagNoHole == 0)
	if err == nil && r.flags&cmdFlagFUA != 0 {
		err = s.flush()
	}
	if err != nil {
		return s.backendErr("WRITE_ZEROES", r.offset, r.length, err)
	}
	return 0
}

// flush persists completed writes when the backend has a cache; without
// Flusher, FUA is advertised only for FUAWriters, whose writes need none.
func (s *session) flush() error {
	if f, ok := s.backend.(Flusher); ok {
		return f.Flush()
	}
	return nil
}

// inflightLimiter bounds the requests and payload bytes of one connection.
type inflightLimiter struct {
	mu       sync.Mutex
	cond     sync.Cond
	n, maxN  int
	bytes    int64
	maxBytes int64
}

func newInflightLimiter(maxN int, maxBytes int64) *inflightLimiter {
	l := &inflightLimiter{maxN: maxN, maxBytes: maxBytes}
	l.cond.L = &l.mu
	return l
}

// acquire waits for a slot for a request with b payload bytes. A request is
// always admitted when nothing is in flight, so one larger than the byte
// budget cannot wait forever.
func (l *inflightLimiter) acquire(b int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.n >= l.maxN || (l.n > 0 && l.bytes+b > l.maxBytes) {
		l.cond.Wait()
	}
	l.n++
	l.bytes += b
}

func (l *inflightLimiter) release(b int64) {
	l.mu.Lock()
	l.n--
	l.bytes -= b
	l.mu.Unlock()
	l.cond.Broadcast()
}

// Payload buffers are pooled by power-of-two size class, from 4 KiB up, so
// steady traffic allocates nothing.
const (
	minBufferShift = 12
	maxBufferShift = 31
)

var bufferPools [maxBufferShift - minBufferShift + 1]sync.Pool

func bufferClass(n int) int {
	if n <= 1<<minBufferShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufferShift
}

func getBuffer(n int) []byte {
	c := bufferClass(n)
	if p, ok := bufferPools[c].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<(c+minBufferShift))
}

func putBuffer(b []byte) {
	if b == nil {
		return
	}
	c := bufferClass(cap(b))
	if cap(b) != 1<<(c+minBufferShift) {
		return
	}
	b = b[:cap(b)]
	bufferPools[c].Put(&b)
}
