package nbd

import "github.com/pkg/errors"

// Sentinel errors. Callers test for them with errors.Is; the errors returned
// by this package wrap them with context (peer, export, offset, ...).
var (
	// ErrServerClosed is returned by Serve and ServeConn after Shutdown.
	ErrServerClosed = errors.New("nbd: server closed")
	// ErrShutdown is returned by a Client whose server is shutting down
	// (NBD_REP_ERR_SHUTDOWN or ESHUTDOWN).
	ErrShutdown = errors.New("nbd: server is shutting down")
	// ErrBadMagic means the peer sent a magic number where the protocol
	// requires a fixed one: it does not speak NBD or lost framing.
	ErrBadMagic = errors.New("nbd: bad magic number")
	// ErrProtocol means the peer violated the protocol in a way that forces
	// a hard disconnect (unknown client flags, unexpected reply, ...).
	ErrProtocol = errors.New("nbd: protocol violation")
	// ErrOptionTooLarge means a client sent option data beyond the server's
	// limit, or a server sent an oversized option reply.
	ErrOptionTooLarge = errors.New("nbd: option data too large")
	// ErrRequestTooLarge means a request's length exceeds the negotiated
	// maximum block size.
	ErrRequestTooLarge = errors.New("nbd: request too large")
	// ErrUnknownExport means no export has the requested name.
	ErrUnknownExport = errors.New("nbd: unknown export")
	// ErrExportExists is returned by AddExport for a name already in use.
	ErrExportExists = errors.New("nbd: export already exists")
	// ErrInvalidName means an export name or description is not a valid
	// protocol string (longer than 4096 bytes or containing NUL).
	ErrInvalidName = errors.New("nbd: invalid export name")
	// ErrTLSRequired means the server requires TLS and the client did not
	// negotiate it (or could not).
	ErrTLSRequired = errors.New("nbd: TLS required")
	// ErrUnsupported means the peer does not support a requested option or
	// command (NBD_REP_ERR_UNSUP, or a transmission flag not advertised).
	ErrUnsupported = errors.New("nbd: not supported")
	// ErrOptionRejected means the server answered an option with an error
	// reply other than those with their own sentinel.
	ErrOptionRejected = errors.New("nbd: option rejected")
	// ErrReadOnly is returned by read-only backends on any write.
	ErrReadOnly = errors.New("nbd: read-only")
	// ErrOutOfRange is returned by backends for accesses past their size.
	ErrOutOfRange = errors.New("nbd: offset out of range")
	// ErrClientClosed is returned by Client methods after Close or after the
	// connection broke.
	ErrClientClosed = errors.New("nbd: client closed")
	// ErrAborted means the client ended option haggling with NBD_OPT_ABORT
	// (or the server answered an abort) without entering transmission.
	ErrAborted = errors.New("nbd: negotiation aborted")
)
