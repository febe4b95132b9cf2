package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"

	"github.com/pkg/errors"
)

// The server side of the fixed newstyle handshake. Its states and
// transitions:
//
//	state      client sends                       server answers                          next state
//	---------  ---------------------------------  --------------------------------------  ------------
//	greeting   -                                  NBDMAGIC IHAVEOPT flags(FIXED|NO_ZEROES) flags
//	flags      known client flags                 -                                       options
//	flags      unknown flags                      close                                   closed
//	options    bad option magic                   close                                   closed
//	options    option data > 64 KiB               skip data, ERR_TOO_BIG (EXPORT_NAME: close) options
//	options    any but STARTTLS/ABORT, TLS        ERR_TLS_REQD (EXPORT_NAME: close)        options
//	           required and not yet up
//	options    EXPORT_NAME, known export          size, flags [, 124 zero bytes]          transmission
//	options    EXPORT_NAME, unknown export        close                                   closed
//	options    GO, known export                   INFO(EXPORT [,NAME,DESCRIPTION,         transmission
//	                                              BLOCK_SIZE as asked]), ACK
//	options    INFO, known export                 same as GO                              options
//	options    GO/INFO, unknown export            ERR_UNKNOWN                             options
//	options    GO/INFO, malformed                 ERR_INVALID                             options
//	options    LIST                               SERVER per export, ACK                  options
//	options    STARTTLS, TLS configured           ACK, TLS handshake                      options (TLS)
//	options    STARTTLS, TLS up / with data       ERR_INVALID                             options
//	options    STARTTLS, no TLS configured        ERR_UNSUP (ERR_POLICY if not fixed)     options
//	options    ABORT                              ACK                                     closed
//	options    anything else                      ERR_UNSUP                               options
//
// Structured replies, metadata contexts and extended headers are not
// implemented, so their options get ERR_UNSUP and every reply in
// transmission is a simple reply.

// optionResult tells the option loop what to do after an option.
type optionResult int

const (
	optContinue     optionResult = iota // wait for the next option
	optTransmission                     // enter transmission with the chosen export
	optEnd                              // the client aborted: close
)

type optionHandler func(n *negotiation, opt uint32, data []byte) (optionResult, *export, error)

// optionTable maps every implemented option to its handler; options not in
// the table are answered with NBD_REP_ERR_UNSUP.
var optionTable = map[uint32]optionHandler{
	optExportName: (*negotiation).optExportName,
	optAbort:      (*negotiation).optAbort,
	optList:       (*negotiation).optList,
	optStartTLS:   (*negotiation).optStartTLS,
	optInfo:       (*negotiation).optInfoGo,
	optGo:         (*negotiation).optInfoGo,
}

// negotiation is the state of one connection's option haggling.
type negotiation struct {
	c        *serverConn
	srv      *Server
	ctx      context.Context
	rw       net.Conn // raw connection, or TLS over it after STARTTLS
	br       *bufio.Reader
	bw       *bufio.Writer
	fixed    bool // client set NBD_FLAG_C_FIXED_NEWSTYLE
	noZeroes bool // client set NBD_FLAG_C_NO_ZEROES
	tls      bool
	size     int64 // export size sent to the client on entering transmission
}

func newNegotiation(c *serverConn) *negotiation {
	return &negotiation{
		c:   c,
		srv: c.srv,
		rw:  c.raw,
		br:  bufio.NewReaderSize(c.raw, 64<<10),
		bw:  bufio.NewWriterSize(c.raw, 4<<10),
	}
}

// run performs the handshake. It returns the export to serve, or a nil
// export and nil error when the client aborted cleanly.
func (n *negotiation) run(ctx context.Context) (*export, error) {
	n.ctx = ctx
	var greet [18]byte
	binary.BigEndian.PutUint64(greet[0:8], magicNBD)
	binary.BigEndian.PutUint64(greet[8:16], magicOpts)
	binary.BigEndian.PutUint16(greet[16:18], handshakeFlagFixedNewstyle|handshakeFlagNoZeroes)
	if _, err := n.bw.Write(greet[:]); err != nil {
		return nil, err
	}
	if err := n.bw.Flush(); err != nil {
		return nil, errors.Wrap(err, "nbd: send greeting")
	}
	var cf [4]byte
	if _, err := io.ReadFull(n.br, cf[:]); err != nil {
		return nil, errors.Wrap(err, "nbd: read client flags")
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^clientFlagsKnown != 0 {
		return nil, errors.Wrapf(ErrProtocol, "unknown client flags %#x", flags)
	}
	n.fixed = flags&clientFlagFixedNewstyle != 0
	n.noZeroes = flags&clientFlagNoZeroes != 0
	if n.srv.opts.RequireTLS && !n.fixed {
		// TLS needs fixed newstyle; without it no option could succeed.
		return nil, errors.Wrap(ErrTLSRequired, "client does not support fixed newstyle negotiation")
	}

	for {
		var hdr [optionHeaderSize]byte
		if _, err := io.ReadFull(n.br, hdr[:]); err != nil {
			return nil, errors.Wrap(err, "nbd: read option")
		}
		if m := binary.BigEndian.Uint64(hdr[0:8]); m != magicOpts {
			return nil, errors.Wrapf(ErrBadMagic, "option magic %#016x", m)
		}
		opt := binary.BigEndian.Uint32(hdr[8:12])
		length := binary.BigEndian.Uint32(hdr[12:16])
		res, e, err := n.handle(opt, length)
		if err != nil {
			return nil, err
		}
		if err := n.bw.Flush(); err != nil {
			return nil, errors.Wrapf(err, "nbd: reply to option %s", optionName(opt))
		}
		switch res {
		case optTransmission:
			return e, nil
		case optEnd:
			return nil, nil
		}
	}
}

// handle reads one option's data and dispatches it.
func (n *negotiation) handle(opt, length uint32) (optionResult, *export, error) {
	if length > maxOptionLength {
		// Skipping keeps the stream in sync without buffering the data;
		// the handshake deadline bounds how long a client can feed it.
		if _, err := io.CopyN(io.Discard, n.br, int64(length)); err != nil {
			return 0, nil, errors.Wrapf(err, "nbd: skip option %s data", optionName(opt))
		}
		if opt == optExportName {
			return 0, nil, errors.Wrapf(ErrOptionTooLarge, "EXPORT_NAME with %d bytes", length)
		}
		n.c.log.Warn("nbd: option data too large", "option", optionName(opt), "length", length)
		return optContinue, nil, n.replyErr(opt, repErrTooBig, "option data of %d bytes exceeds %d", length, maxOptionLength)
	}
	data := make([]byte, length)
	if _, err := io.ReadFull(n.br, data); err != nil {
		return 0, nil, errors.Wrapf(err, "nbd: read option %s data", optionName(opt))
	}
	if n.srv.opts.RequireTLS && !n.tls && opt != optStartTLS && opt != optAbort {
		if opt == optExportName {
			return 0, nil, errors.Wrap(ErrTLSRequired, "EXPORT_NAME before STARTTLS")
		}
		return optContinue, nil, n.replyErr(opt, repErrTLSReqd, "TLS is required")
	}
	h, ok := optionTable[opt]
	if !ok {
		n.c.log.Debug("nbd: unsupported option", "option", optionName(opt))
		return optContinue, nil, n.replyErr(opt, repErrUnsup, "option %s is not supported", optionName(opt))
	}
	return h(n, opt, data)
}

// reply queues one option reply; run flushes after each option.
func (n *negotiation) reply(opt, typ uint32, data ...[]byte) error {
	total := 0
	for _, d := range data {
		total += len(d)
	}
	var hdr [optionReplyHeaderSize]byte
	encodeOptionReplyHeader(hdr[:], opt, typ, uint32(total))
	if _, err := n.bw.Write(hdr[:]); err != nil {
		return errors.Wrapf(err, "nbd: reply to option %s", optionName(opt))
	}
	for _, d := range data {
		if _, err := n.bw.Write(d); err != nil {
			return errors.Wrapf(err, "nbd: reply to option %s", optionName(opt))
		}
	}
	return nil
}

// replyErr sends an error reply with a message for the user; qemu and
// libnbd print it.
func (n *negotiation) replyErr(opt, typ uint32, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if len(msg) > maxStringLength {
		msg = msg[:maxStringLength]
	}
	return n.reply(opt, typ, []byte(msg))
}

// optExportName ends negotiation the old way: it cannot report errors, so an
// unknown export ends the session.
func (n *negotiation) optExportName(_ uint32, data []byte) (optionResult, *export, error) {
	name := string(data)
	e, ok := n.srv.lookup(name)
	if !ok {
		return 0, nil, errors.Wrapf(ErrUnknownExport, "EXPORT_NAME %q", name)
	}
	n.size = e.backend.Size()
	var b [8 + 2 + exportNameReplyZeroPadBytes]byte
	binary.BigEndian.PutUint64(b[0:8], uint64(n.size))
	binary.BigEndian.PutUint16(b[8:10], uint16(e.flags))
	out := b[:]
	if n.noZeroes {
		out = b[:10]
	}
	if _, err := n.bw.Write(out); err != nil {
		return 0, nil, errors.Wrap(err, "nbd: reply to EXPORT_NAME")
	}
	return optTransmission, e, nil
}

func (n *negotiation) optAbort(opt uint32, _ []byte) (optionResult, *export, error) {
	// The client may already have closed; an error sending the ACK is
	// of no consequence.
	_ = n.reply(opt, repAck)
	_ = n.bw.Flush()
	return optEnd, nil, nil
}

func (n *negotiation) optList(opt uint32, data []byte) (optionResult, *export, error) {
	if len(data) != 0 {
		return optContinue, nil, n.replyErr(opt, repErrInvalid, "LIST takes no data")
	}
	for _, e := range n.srv.exportList() {
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(e.name)))
		if err := n.reply(opt, repServer, l[:], []byte(e.name), []byte(e.description)); err != nil {
			return 0, nil, err
		}
	}
	return optContinue, nil, n.reply(opt, repAck)
}

func (n *negotiation) optStartTLS(opt uint32, data []byte) (optionResult, *export, error) {
	cfg := n.srv.opts.TLS
	switch {
	case cfg == nil:
		return optContinue, nil, n.replyErr(opt, repErrUnsup, "TLS is not configured")
	case !n.fixed:
		return optContinue, nil, n.replyErr(opt, repErrPolicy, "TLS needs fixed newstyle negotiation")
	case n.tls:
		return optContinue, nil, n.replyErr(opt, repErrInvalid, "TLS is already running")
	case len(data) != 0:
		return optContinue, nil, n.replyErr(opt, repErrInvalid, "STARTTLS takes no data")
	}
	if err := n.reply(opt, repAck); err != nil {
		return 0, nil, err
	}
	if err := n.bw.Flush(); err != nil {
		return 0, nil, errors.Wrap(err, "nbd: reply to STARTTLS")
	}
	if n.br.Buffered() != 0 {
		// Bytes sent before our ACK would be plaintext smuggled into the
		// TLS session.
		return 0, nil, errors.Wrap(ErrProtocol, "client sent data before the TLS handshake")
	}
	tc := tls.Server(n.c.raw, cfg)
	if err := tc.HandshakeContext(n.ctx); err != nil {
		return 0, nil, errors.Wrap(err, "nbd: TLS handshake")
	}
	n.tls = true
	n.rw = tc
	n.br = bufio.NewReaderSize(tc, 64<<10)
	n.bw = bufio.NewWriterSize(tc, 4<<10)
	n.c.log.Debug("nbd: TLS established", "version", tls.VersionName(tc.ConnectionState().Version))
	return optContinue, nil, nil
}

// optInfoGo answers NBD_OPT_INFO and NBD_OPT_GO, which share their format:
// u32 name length, name, u16 count, count × u16 information requests.
func (n *negotiation) optInfoGo(opt uint32, data []byte) (optionResult, *export, error) {
	if len(data) < 6 {
		return optContinue, nil, n.replyErr(opt, repErrInvalid, "%s data of %d bytes is too short", optionName(opt), len(data))
	}
	nameLen := binary.BigEndian.Uint32(data[0:4])
	if uint64(nameLen) > uint64(len(data)-6) {
		return optContinue, nil, n.replyErr(opt, repErrInvalid, "export name length %d exceeds the option data", nameLen)
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	count := int(binary.BigEndian.Uint16(rest[0:2]))
	rest = rest[2:]
	if len(rest) != 2*count {
		return optContinue, nil, n.replyErr(opt, repErrInvalid, "%d information requests do not fill %d bytes", count, len(rest))
	}
	e, ok := n.srv.lookup(name)
	if !ok {
		return optContinue, nil, n.replyErr(opt, repErrUnknown, "export %q is not available", name)
	}
	var wantName, wantDesc, wantBlock bool
	for i := 0; i < count; i++ {
		switch binary.BigEndian.Uint16(rest[2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		case infoBlockSize:
			wantBlock = true
		}
	}

	size := e.backend.Size()
	var ex [12]byte
	binary.BigEndian.PutUint16(ex[0:2], infoExport)
	binary.BigEndian.PutUint64(ex[2:10], uint64(size))
	binary.BigEndian.PutUint16(ex[10:12], uint16(e.flags))
	if err := n.reply(opt, repInfo, ex[:]); err != nil {
		return 0, nil, err
	}
	if wantName {
		if err := n.reply(opt, repInfo, be16(infoName), []byte(e.name)); err != nil {
			return 0, nil, err
		}
	}
	if wantDesc && e.description != "" {
		if err := n.reply(opt, repInfo, be16(infoDescription), []byte(e.description)); err != nil {
			return 0, nil, err
		}
	}
	if wantBlock {
		var bs [14]byte
		binary.BigEndian.PutUint16(bs[0:2], infoBlockSize)
		binary.BigEndian.PutUint32(bs[2:6], 1)
		binary.BigEndian.PutUint32(bs[6:10], defaultPreferredBlockSize)
		binary.BigEndian.PutUint32(bs[10:14], uint32(n.srv.opts.MaxRequestSize))
		if err := n.reply(opt, repInfo, bs[:]); err != nil {
			return 0, nil, err
		}
	}
	if err := n.reply(opt, repAck); err != nil {
		return 0, nil, err
	}
	if opt == optGo {
		n.size = size
		return optTransmission, e, nil
	}
	return optContinue, nil, nil
}

func be16(v uint16) []byte {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return b[:]
}
