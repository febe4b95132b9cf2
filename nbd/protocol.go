package nbd

import (
	"encoding/binary"
	"strconv"
	"strings"
	"syscall"

	"github.com/pkg/errors"
)

// Magic numbers of the newstyle protocol. All integers on the wire are
// big-endian.
const (
	magicNBD             uint64 = 0x4e42444d41474943 // "NBDMAGIC", first 8 bytes the server sends
	magicOpts            uint64 = 0x49484156454F5054 // "IHAVEOPT", greeting and every option request
	magicOptReply        uint64 = 0x3e889045565a9    // every fixed-newstyle option reply
	magicRequest         uint32 = 0x25609513         // every transmission request
	magicSimpleReply     uint32 = 0x67446698         // every simple reply
	magicStructuredReply uint32 = 0x668e33ef         // structured reply chunks (never negotiated here)
)

// Handshake flags (server, 16 bits) and client flags (32 bits).
const (
	handshakeFlagFixedNewstyle uint16 = 1 << 0
	handshakeFlagNoZeroes      uint16 = 1 << 1

	clientFlagFixedNewstyle uint32 = 1 << 0
	clientFlagNoZeroes      uint32 = 1 << 1
	clientFlagsKnown               = clientFlagFixedNewstyle | clientFlagNoZeroes
)

// Option types sent by the client during option haggling.
const (
	optExportName      uint32 = 1
	optAbort           uint32 = 2
	optList            uint32 = 3
	optPeekExport      uint32 = 4
	optStartTLS        uint32 = 5
	optInfo            uint32 = 6
	optGo              uint32 = 7
	optStructuredReply uint32 = 8
	optListMetaContext uint32 = 9
	optSetMetaContext  uint32 = 10
	optExtendedHeaders uint32 = 11
)

// Option reply types; errors have bit 31 set.
const (
	repAck              uint32 = 1
	repServer           uint32 = 2
	repInfo             uint32 = 3
	repMetaContext      uint32 = 4
	repErrBit           uint32 = 1 << 31
	repErrUnsup                = repErrBit | 1
	repErrPolicy               = repErrBit | 2
	repErrInvalid              = repErrBit | 3
	repErrPlatform             = repErrBit | 4
	repErrTLSReqd              = repErrBit | 5
	repErrUnknown              = repErrBit | 6
	repErrShutdown             = repErrBit | 7
	repErrBlockSizeReqd        = repErrBit | 8
	repErrTooBig               = repErrBit | 9
)

// Sizes of handshake messages.
const (
	optionHeaderSize            = 16  // magic(8) option(4) length(4)
	optionReplyHeaderSize       = 20  // magic(8) option(4) type(4) length(4)
	exportNameReplyZeroPadBytes = 124 // reserved zeros after NBD_OPT_EXPORT_NAME's reply
)

// Information types carried by NBD_REP_INFO in answer to NBD_OPT_INFO/GO.
const (
	infoExport      uint16 = 0
	infoName        uint16 = 1
	infoDescription uint16 = 2
	infoBlockSize   uint16 = 3
)

// Transmission-phase command types and command flags.
const (
	cmdRead        uint16 = 0
	cmdWrite       uint16 = 1
	cmdDisc        uint16 = 2
	cmdFlush       uint16 = 3
	cmdTrim        uint16 = 4
	cmdCache       uint16 = 5
	cmdWriteZeroes uint16 = 6
	cmdBlockStatus uint16 = 7

	cmdFlagFUA      uint16 = 1 << 0
	cmdFlagNoHole   uint16 = 1 << 1
	cmdFlagDF       uint16 = 1 << 2
	cmdFlagReqOne   uint16 = 1 << 3
	cmdFlagFastZero uint16 = 1 << 4

	requestHeaderSize     = 28 // magic(4) flags(2) type(2) handle(8) offset(8) length(4)
	simpleReplyHeaderSize = 16 // magic(4) error(4) handle(8)
)

// Limits taken from the protocol document.
const (
	// maxStringLength is the longest export name, description or message the
	// protocol allows.
	maxStringLength = 4096
	// dosPayloadThreshold is the payload size below which the protocol says
	// a request SHOULD NOT be treated as a denial of service attack.
	dosPayloadThreshold = 1 << 25
	// defaultPreferredBlockSize is the preferred block size the server
	// advertises; 4 KiB matches page-cache and most filesystem blocks.
	defaultPreferredBlockSize = 4096
)

// TransmissionFlags is the 16-bit field the server sends with an export's
// size; it tells the client which commands it may use.
type TransmissionFlags uint16

// Transmission flags defined by the protocol.
const (
	FlagHasFlags        TransmissionFlags = 1 << 0
	FlagReadOnly        TransmissionFlags = 1 << 1
	FlagSendFlush       TransmissionFlags = 1 << 2
	FlagSendFUA         TransmissionFlags = 1 << 3
	FlagRotational      TransmissionFlags = 1 << 4
	FlagSendTrim        TransmissionFlags = 1 << 5
	FlagSendWriteZeroes TransmissionFlags = 1 << 6
	FlagSendDF          TransmissionFlags = 1 << 7
	FlagCanMultiConn    TransmissionFlags = 1 << 8
	FlagSendResize      TransmissionFlags = 1 << 9
	FlagSendCache       TransmissionFlags = 1 << 10
	FlagSendFastZero    TransmissionFlags = 1 << 11
)

var transmissionFlagNames = []struct {
	f    TransmissionFlags
	name string
}{
	{FlagHasFlags, "HAS_FLAGS"},
	{FlagReadOnly, "READ_ONLY"},
	{FlagSendFlush, "SEND_FLUSH"},
	{FlagSendFUA, "SEND_FUA"},
	{FlagRotational, "ROTATIONAL"},
	{FlagSendTrim, "SEND_TRIM"},
	{FlagSendWriteZeroes, "SEND_WRITE_ZEROES"},
	{FlagSendDF, "SEND_DF"},
	{FlagCanMultiConn, "CAN_MULTI_CONN"},
	{FlagSendResize, "SEND_RESIZE"},
	{FlagSendCache, "SEND_CACHE"},
	{FlagSendFastZero, "SEND_FAST_ZERO"},
}

// String returns the flag names joined by '|', for logs and error messages.
func (f TransmissionFlags) String() string {
	var parts []string
	rest := f
	for _, n := range transmissionFlagNames {
		if f&n.f != 0 {
			parts = append(parts, n.name)
			rest &^= n.f
		}
	}
	if rest != 0 {
		parts = append(parts, "0x"+strconv.FormatUint(uint64(rest), 16))
	}
	if len(parts) == 0 {
		return "0"
	}
	return strings.Join(parts, "|")
}

// Errno is an error value of a simple reply. Only the values below are
// defined by the protocol; a client treats any other as EINVAL.
type Errno uint32

// Error values defined by the protocol. They deliberately reuse the common
// Linux errno numbers, and so the syscall names.
const (
	EPERM     Errno = 1
	EIO       Errno = 5
	ENOMEM    Errno = 12
	EINVAL    Errno = 22
	ENOSPC    Errno = 28
	EOVERFLOW Errno = 75
	ENOTSUP   Errno = 95
	ESHUTDOWN Errno = 108
)

// Error returns the conventional text of the error value.
func (e Errno) Error() string {
	switch e {
	case EPERM:
		return "nbd: EPERM: operation not permitted"
	case EIO:
		return "nbd: EIO: input/output error"
	case ENOMEM:
		return "nbd: ENOMEM: cannot allocate memory"
	case EINVAL:
		return "nbd: EINVAL: invalid argument"
	case ENOSPC:
		return "nbd: ENOSPC: no space left on device"
	case EOVERFLOW:
		return "nbd: EOVERFLOW: value too large"
	case ENOTSUP:
		return "nbd: ENOTSUP: operation not supported"
	case ESHUTDOWN:
		return "nbd: ESHUTDOWN: server is shutting down"
	}
	return "nbd: error " + strconv.FormatUint(uint64(e), 10)
}

// errnoFor maps a backend error to the protocol's restricted error set, so a
// client sees ENOSPC for a full disk and EPERM for a read-only medium rather
// than a bare EIO.
func errnoFor(err error) Errno {
	var e Errno
	if errors.As(err, &e) {
		return e
	}
	switch {
	case errors.Is(err, ErrReadOnly):
		return EPERM
	case errors.Is(err, ErrOutOfRange):
		return EINVAL
	case errors.Is(err, ErrShutdown):
		return ESHUTDOWN
	}
	var sys syscall.Errno
	if errors.As(err, &sys) {
		switch sys {
		case syscall.EPERM, syscall.EACCES, syscall.EROFS:
			return EPERM
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return ENOSPC
		case syscall.EINVAL:
			return EINVAL
		case syscall.EOVERFLOW:
			return EOVERFLOW
		}
	}
	// ENOMEM is discouraged by the protocol; anything else is an I/O error.
	return EIO
}

// commandName names a command type for logs and error messages.
func commandName(typ uint16) string {
	switch typ {
	case cmdRead:
		return "READ"
	case cmdWrite:
		return "WRITE"
	case cmdDisc:
		return "DISC"
	case cmdFlush:
		return "FLUSH"
	case cmdTrim:
		return "TRIM"
	case cmdCache:
		return "CACHE"
	case cmdWriteZeroes:
		return "WRITE_ZEROES"
	case cmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return "CMD_" + strconv.FormatUint(uint64(typ), 10)
}

// optionName names an option type for logs and error messages.
func optionName(opt uint32) string {
	switch opt {
	case optExportName:
		return "EXPORT_NAME"
	case optAbort:
		return "ABORT"
	case optList:
		return "LIST"
	case optPeekExport:
		return "PEEK_EXPORT"
	case optStartTLS:
		return "STARTTLS"
	case optInfo:
		return "INFO"
	case optGo:
		return "GO"
	case optStructuredReply:
		return "STRUCTURED_REPLY"
	case optListMetaContext:
		return "LIST_META_CONTEXT"
	case optSetMetaContext:
		return "SET_META_CONTEXT"
	case optExtendedHeaders:
		return "EXTENDED_HEADERS"
	}
	return "OPT_" + strconv.FormatUint(uint64(opt), 10)
}

// request is a decoded transmission request header.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	offset uint64
	length uint32
}

func decodeRequest(b []byte) (request, error) {
	if m := binary.BigEndian.Uint32(b[0:4]); m != magicRequest {
		return request{}, errors.Wrapf(ErrBadMagic, "request magic %#08x", m)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		typ:    binary.BigEndian.Uint16(b[6:8]),
		handle: binary.BigEndian.Uint64(b[8:16]),
		offset: binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

func encodeRequest(b []byte, r request) {
	binary.BigEndian.PutUint32(b[0:4], magicRequest)
	binary.BigEndian.PutUint16(b[4:6], r.flags)
	binary.BigEndian.PutUint16(b[6:8], r.typ)
	binary.BigEndian.PutUint64(b[8:16], r.handle)
	binary.BigEndian.PutUint64(b[16:24], r.offset)
	binary.BigEndian.PutUint32(b[24:28], r.length)
}

func encodeSimpleReply(b []byte, errno Errno, handle uint64) {
	binary.BigEndian.PutUint32(b[0:4], magicSimpleReply)
	binary.BigEndian.PutUint32(b[4:8], uint32(errno))
	binary.BigEndian.PutUint64(b[8:16], handle)
}

func encodeOptionReplyHeader(b []byte, opt, typ uint32, length uint32) {
	binary.BigEndian.PutUint64(b[0:8], magicOptReply)
	binary.BigEndian.PutUint32(b[8:12], opt)
	binary.BigEndian.PutUint32(b[12:16], typ)
	binary.BigEndian.PutUint32(b[16:20], length)
}

// validString reports whether s may be sent as a protocol string.
func validString(s string) bool {
	return len(s) <= maxStringLength && !strings.ContainsRune(s, 0)
}
