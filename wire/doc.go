// Package wire is the network protocol between walb-go servers (storage,
// proxy, archive) and their controller: a connection handshake naming one
// command, then typed, checksummed frames. It keeps walb-tools' semantics
// (system.md §6: one command per connection; replies ok / accept / error
// text; ACK; bulk streams with Next / End / Error / Dummy control; I/O
// timeouts and keepalive) with a wire format of its own that is versioned,
// bounded and can run over TLS. It is not byte-compatible with walb-tools.
//
// # Using it
//
// A client calls Dial(ctx, addr, clientID, command, opts, args...) and gets a
// *Conn for the command's exchange; a server calls Listen, then for each
// connection Accept and Handshake, which returns the *Conn whose Command and
// Args say what to run (package server does this). Both sides then use the
// typed helpers: SendString / RecvString, SendStrings, SendU64, SendBool,
// SendBytes, SendValue (any meta.Encodable: Snap, Diff, State, LsidGid),
// SendAck, the replies SendOK / SendAccept / SendError with RecvReply /
// ExpectOK / ExpectAccept, and bulk streams (NewStreamWriter /
// NewStreamReader). An error reply arrives as a *RemoteError whatever the
// receiver was waiting for; errors.Is(err, wire.ErrWrongState) and the
// other Code constants test its code. A typical command:
//
//	c, err := wire.Dial(ctx, "archive1:5000", "walbc", "get", nil, "state", "vol0")
//	if err != nil { ... }
//	defer c.Close()
//	if err := c.ExpectOK(ctx); err != nil { ... } // *RemoteError on refusal
//	state, err := c.RecvString(ctx)
//
// Every blocking method takes a context: its deadline bounds the operation
// and its cancellation interrupts it (the connection is then unusable).
// Independently, each frame must be sent or received within
// Options.IOTimeout (default 10 s); a side that is busy for longer keeps its
// peer waiting with KeepAlive, which sends Dummy frames.
//
// # Connection
//
// Each side first sends an 8-byte preamble, the client at once and the
// server after reading the client's Hello (both are little-endian):
//
//	offset  size  field
//	------  ----  ---------------------------------------------
//	0       6     magic "WALBGO" (57 41 4C 42 47 4F)
//	6       2     protocol version, u16 (this package: 1)
//
// Then the client sends a Hello frame and the server answers with a Welcome
// frame. An ok Welcome opens the exchange of the named command; an error
// Welcome (bad magic, malformed Hello, version mismatch, unknown command,
// server shutting down) is followed by the server closing the connection.
// The exchange that follows is defined by each command (package server and
// the servers built on it); it ends when the server closes the connection,
// after a half-close that lets the client read everything first.
//
// # Frames
//
// After the preambles every byte belongs to a frame:
//
//	offset  size  field
//	------  ----  ---------------------------------------------------
//	0       1     type (table below)
//	1       4     payload length n, u32 little-endian
//	5       n     payload
//	5+n     4     CRC-32C (Castagnoli) of bytes [0, 5+n), u32 LE
//
// The checksum covers the header too, so a corrupted type or length is
// caught as well as corrupted data. A receiver refuses, and closes the
// connection on, an unknown type (ErrBadFrame), a length over its MaxFrame
// (ErrFrameTooLarge; checked before any payload is read), a wrong length for
// a fixed-size type (ErrBadFrame), a checksum mismatch (ErrChecksum), or a
// frame of another type than the exchange expects at that point
// (ErrUnexpectedFrame). MaxFrame defaults to 16 MiB (DefaultMaxFrame), is at
// least 64 KiB and at most 1 GiB; each side announces its own in the
// handshake and a sender refuses to send a larger payload (ErrFrameTooLarge,
// nothing is sent). Receive buffers grow only as payload bytes arrive.
//
//	type  name     payload
//	----  -------  -----------------------------------------------------
//	0x01  Hello    client handshake (below)
//	0x02  Welcome  server handshake answer (below)
//	0x10  Reply    kind u8: 0 ok, 1 accept, 2 error; for an error, then
//	               code length u8, code (ASCII), message (UTF-8, the rest,
//	               at most 32 KiB)
//	0x11  Ack      empty: "what you sent is committed" (walb-tools ACK)
//	0x12  Dummy    empty: keepalive; receivers skip it anywhere after
//	               the handshake
//	0x20  String   the bytes of the string
//	0x21  Strings  count u32, then per string: length u32, bytes
//	0x22  U64      8 bytes, little-endian
//	0x23  Bool     1 byte, 0 or 1
//	0x24  Bytes    opaque bytes (UUIDs, hashes)
//	0x25  Value    one record in the cybozu serialized form of package meta
//	               (preamble included; the payload holds exactly one value)
//	0x30  Chunk    one chunk of a bulk stream (opaque bytes, may be empty)
//	0x31  End      empty: end of a bulk stream
//
// Hello (client → server):
//
//	offset  size  field
//	------  ----  --------------------------------------------------
//	0       4     client MaxFrame, u32 (≥ 65536)
//	4       2+k   client id: length u16, bytes (≤ 1024)
//	.       2+m   command: length u16, bytes (1..255)
//	.       4+…   arguments: a Strings payload
//	.       …     (later versions may append fields; ignored)
//
// The whole Hello payload is at most 64 KiB (servers refuse a bigger
// Hello frame), so it fits any server.
//
// Welcome (server → client):
//
//	offset  size  field
//	------  ----  --------------------------------------------------
//	0       2     session version, u16 (equal to the server's preamble)
//	2       4     server MaxFrame, u32 (≥ 65536)
//	6       2+k   server id: length u16, bytes
//	.       …     status: a Reply payload, ok (0) or error (2)
//	.       …     (later versions may append fields after an ok status;
//	              ignored)
//
// Example: the client "ctl" opening "get" with arguments ["state", "v0"]
// and MaxFrame 16 MiB sends
//
//	57 41 4C 42 47 4F 01 00                        preamble, version 1
//	01 21 00 00 00                                 Hello, 33 payload bytes
//	00 00 00 01  03 00 63 74 6C  03 00 67 65 74    max 16 MiB, "ctl", "get"
//	02 00 00 00  05 00 00 00 73 74 61 74 65        2 arguments, "state"
//	02 00 00 00 76 30                              "v0"
//	67 6E 8B 18                                    CRC-32C of the 38 bytes
//
// # Replies and errors
//
// A command answers with a Reply frame: ok (done; values may follow in
// their own frames), accept (started in the background) or error. An error
// carries a Code (ErrWrongState "wrong-state", ErrTooManyTasks
// "too-many-tasks", ErrTooOldDiff "too-old-diff", ...: the constants of type
// Code) and a message; CodeOf picks the code of a Go error, so a handler
// returns errors.Wrapf(wire.ErrNotFound, "volume %s", vol) and the client
// sees a *RemoteError that matches wire.ErrNotFound. An error reply may be
// sent at any point of an exchange, instead of whatever frame the peer
// expects, including inside a bulk stream (that is how a stream is
// aborted); it ends the exchange.
//
// # Bulk streams
//
// A stream is a run of Chunk frames ended by End, or cut by an error Reply
// (walb-tools' Next / End / Error control bytes), with Dummy frames allowed
// anywhere (Dummy). The chunk layout is the exchange's business (for example
// one compressed bulk per chunk). Every frame is flushed as it is sent, and
// chunk payloads of 32 KiB or more go to the socket with one writev from
// the sender's buffer, so a stream costs no copy and no allocation per
// chunk on either side; the receiver reuses one buffer. Nothing queues
// beyond the socket buffers, so a slow receiver slows the sender.
//
// # Timeouts, keepalive, TLS
//
// Each frame sent or received must complete within Options.IOTimeout, or
// sooner if the operation's context says so; a timeout breaks the
// connection (ErrTimeout, which also matches os.ErrDeadlineExceeded). Dummy
// frames restart the receiver's timeout, so a busy side runs
// Conn.KeepAlive. TCP keepalive probes are set with Options.KeepAlive.
// With Options.TLS the whole byte stream above runs inside TLS (crypto/tls);
// without it the connection is plain TCP (or a unix socket, "unix:/path"),
// as with walb-tools, which assumes a trusted network.
//
// # Versioning
//
// The version is one u16. A server accepts a client whose version is at
// least MinVersion; the session speaks min(client version, server
// version), which the server announces in its preamble and Welcome, and the
// client refuses a session version it does not speak (ErrVersionMismatch).
// These parts are frozen in every version, so that any two versions can
// always tell each other what is wrong: the preamble, the frame header and
// CRC, the Hello and Welcome payloads up to the fields listed above (new
// fields are only appended), and the Reply payload. Any other change that a
// peer of the previous version could not parse (a new frame type, a changed
// payload) increments the version. New commands and new codes do not: an
// old server answers an unknown command with ErrUnknownCommand, and an
// unknown code still comes with its message.
package wire
