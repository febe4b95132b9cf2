package devhost

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/walb"
)

// ProtocolVersion is the version of the control protocol this package
// speaks. A request with another version is answered with code "version".
const ProtocolVersion = 1

// MaxRequestSize bounds one request line, newline included. Requests are
// small (two paths at most); the bound keeps a broken or hostile client
// from making the daemon buffer without limit.
const MaxRequestSize = 64 << 10

// maxResponseSize bounds a response line read by the client (a list of
// many devices is the largest).
const maxResponseSize = 16 << 20

// maxFrame is the largest data frame of a cat-log stream.
const maxFrame = 1 << 20

// Request is one control request: a JSON object on one line.
type Request struct {
	V          int            `json:"v"`
	Op         string         `json:"op"`
	Name       string         `json:"name,omitempty"`
	LogDevice  string         `json:"log_device,omitempty"`
	DataDevice string         `json:"data_device,omitempty"`
	Options    *CreateOptions `json:"options,omitempty"`
	Force      bool           `json:"force,omitempty"`
	Lsid       *uint64        `json:"lsid,omitempty"`
	SizeLB     *uint64        `json:"size_lb,omitempty"`
	TimeoutMs  *uint64        `json:"timeout_ms,omitempty"`
	IntervalMs *uint64        `json:"interval_ms,omitempty"`
	Begin      *uint64        `json:"begin,omitempty"`
	End        *uint64        `json:"end,omitempty"`
}

// Response is the answer to a request: a JSON object on one line. A
// cat-log answer with Stream set is followed by data frames and a second
// Response, the trailer.
type Response struct {
	V       int           `json:"v"`
	OK      bool          `json:"ok"`
	Code    string        `json:"code,omitempty"`
	Error   string        `json:"error,omitempty"`
	Value   *uint64       `json:"value,omitempty"`
	Bool    *bool         `json:"bool,omitempty"`
	Device  *DeviceInfo   `json:"device,omitempty"`
	Devices []DeviceInfo  `json:"devices,omitempty"`
	Lsids   *WireLsids    `json:"lsids,omitempty"`
	Info    *DeviceStatus `json:"info,omitempty"`
	Stream  bool          `json:"stream,omitempty"`
}

// WireLsids is walb.Lsids as the answer to get-lsids carries it, under the
// names of the driver's sysfs attribute walb/lsids. Every key is sent,
// zeros included.
type WireLsids struct {
	Latest      uint64 `json:"latest"`
	Completed   uint64 `json:"completed"`
	Flush       uint64 `json:"flush"`
	Permanent   uint64 `json:"permanent"`
	Written     uint64 `json:"written"`
	PrevWritten uint64 `json:"prev_written"`
	Oldest      uint64 `json:"oldest"`
}

func toWire(l walb.Lsids) *WireLsids {
	return &WireLsids{Latest: l.Latest, Completed: l.Completed, Flush: l.Flush, Permanent: l.Permanent,
		Written: l.Written, PrevWritten: l.PrevWritten, Oldest: l.Oldest}
}

// Lsids returns w as walb.Lsids.
func (w WireLsids) Lsids() walb.Lsids {
	return walb.Lsids{Latest: w.Latest, Completed: w.Completed, Flush: w.Flush, Permanent: w.Permanent,
		Written: w.Written, PrevWritten: w.PrevWritten, Oldest: w.Oldest}
}

// Request fields an operation may carry, as a bit set.
type field uint16

const (
	fName field = 1 << iota
	fLdev
	fDdev
	fOptions
	fForce
	fLsid
	fSizeLB
	fTimeout
	fInterval
	fBegin
	fEnd
)

var fieldNames = []struct {
	f    field
	name string
}{
	{fName, "name"}, {fLdev, "log_device"}, {fDdev, "data_device"}, {fOptions, "options"},
	{fForce, "force"}, {fLsid, "lsid"}, {fSizeLB, "size_lb"}, {fTimeout, "timeout_ms"},
	{fInterval, "interval_ms"}, {fBegin, "begin"}, {fEnd, "end"},
}

// present returns the fields set in r.
func (r *Request) present() field {
	var f field
	set := func(b bool, x field) {
		if b {
			f |= x
		}
	}
	set(r.Name != "", fName)
	set(r.LogDevice != "", fLdev)
	set(r.DataDevice != "", fDdev)
	set(r.Options != nil, fOptions)
	set(r.Force, fForce)
	set(r.Lsid != nil, fLsid)
	set(r.SizeLB != nil, fSizeLB)
	set(r.TimeoutMs != nil, fTimeout)
	set(r.IntervalMs != nil, fInterval)
	set(r.Begin != nil, fBegin)
	set(r.End != nil, fEnd)
	return f
}

// Answer kinds: which Response field carries the result.
type answer int

const (
	ansNone    answer = iota // ok only
	ansValue                 // value: a number
	ansBool                  // bool
	ansDevice                // device
	ansDevices               // devices
	ansLsids                 // lsids
	ansInfo                  // info
	ansStream                // stream, data frames, trailer with value
)

// opSpec describes one operation: the fields it requires, those it
// accepts besides, and the kind of its answer.
type opSpec struct {
	need, allow field
	ans         answer
}

// ops is the table of operations (see the package documentation).
var ops = map[string]opSpec{
	"create-wdev":             {need: fLdev | fDdev, allow: fName | fOptions, ans: ansDevice},
	"delete-wdev":             {need: fName, allow: fForce, ans: ansNone},
	"list":                    {ans: ansDevices},
	"get-oldest-lsid":         {need: fName, ans: ansValue},
	"set-oldest-lsid":         {need: fName | fLsid, ans: ansNone},
	"get-written-lsid":        {need: fName, ans: ansValue},
	"get-permanent-lsid":      {need: fName, ans: ansValue},
	"get-completed-lsid":      {need: fName, ans: ansValue},
	"get-lsids":               {need: fName, ans: ansLsids},
	"info":                    {need: fName, ans: ansInfo},
	"freeze":                  {need: fName, allow: fTimeout, ans: ansNone},
	"melt":                    {need: fName, ans: ansNone},
	"is-frozen":               {need: fName, ans: ansBool},
	"reset-wal":               {need: fName, ans: ansNone},
	"resize":                  {need: fName, allow: fSizeLB, ans: ansNone},
	"is-log-overflow":         {need: fName, ans: ansBool},
	"get-log-usage":           {need: fName, ans: ansValue},
	"get-log-capacity":        {need: fName, ans: ansValue},
	"is-flush-capable":        {need: fName, ans: ansBool},
	"force-checkpoint":        {need: fName, ans: ansNone},
	"get-checkpoint-interval": {need: fName, ans: ansValue},
	"set-checkpoint-interval": {need: fName | fInterval, ans: ansNone},
	"cat-log":                 {need: fName, allow: fBegin | fEnd, ans: ansStream},
}

// check validates a decoded request against the table.
func (r *Request) check() (opSpec, error) {
	if r.V != ProtocolVersion {
		return opSpec{}, errors.Wrapf(ErrVersion, "request version %d, this daemon speaks %d", r.V, ProtocolVersion)
	}
	spec, ok := ops[r.Op]
	if !ok {
		return opSpec{}, errors.Wrapf(ErrBadRequest, "unknown operation %q", r.Op)
	}
	have := r.present()
	for _, fn := range fieldNames {
		switch {
		case spec.need&fn.f != 0 && have&fn.f == 0:
			return spec, errors.Wrapf(ErrBadRequest, "%s needs %s", r.Op, fn.name)
		case (spec.need|spec.allow)&fn.f == 0 && have&fn.f != 0:
			return spec, errors.Wrapf(ErrBadRequest, "%s takes no %s", r.Op, fn.name)
		}
	}
	return spec, nil
}

// readLine reads one newline-terminated line of at most limit bytes. A
// longer line fails with ErrTooLarge; the rest of it is not consumed, so
// the connection cannot be used further.
func readLine(br *bufio.Reader, limit int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line)+len(chunk) > limit {
			return nil, errors.Wrapf(ErrTooLarge, "line longer than %d bytes", limit)
		}
		line = append(line, chunk...)
		switch err {
		case nil:
			return line, nil
		case bufio.ErrBufferFull:
			continue
		case io.EOF:
			if len(line) == 0 {
				return nil, io.EOF
			}
			return nil, errors.Wrap(io.ErrUnexpectedEOF, "devhost: line without newline")
		default:
			return nil, err
		}
	}
}

// decodeStrict decodes one JSON object from line, refusing unknown fields
// and trailing data.
func decodeStrict(line []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// writeJSONLine writes v as one JSON line.
func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// frameWriter cuts a byte stream into frames: a 4-byte big-endian length
// (1..maxFrame) and that many bytes. Close writes the zero-length end
// frame. Writes are buffered to whole frames.
type frameWriter struct {
	w   io.Writer
	buf []byte
	err error
}

func newFrameWriter(w io.Writer) *frameWriter {
	return &frameWriter{w: w, buf: make([]byte, 4, 4+maxFrame)}
}

func (f *frameWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 && f.err == nil {
		k := min(len(p), 4+maxFrame-len(f.buf))
		f.buf = append(f.buf, p[:k]...)
		p, n = p[k:], n+k
		if len(f.buf) == 4+maxFrame {
			f.flush()
		}
	}
	return n, f.err
}

func (f *frameWriter) flush() {
	if f.err != nil || len(f.buf) == 4 {
		return
	}
	binary.BigEndian.PutUint32(f.buf, uint32(len(f.buf)-4))
	_, f.err = f.w.Write(f.buf)
	f.buf = f.buf[:4]
}

// Close flushes the last frame and writes the end frame.
func (f *frameWriter) Close() error {
	f.flush()
	if f.err == nil {
		_, f.err = f.w.Write([]byte{0, 0, 0, 0})
	}
	return f.err
}

// copyFrames copies the data of frames from r to w up to the end frame.
func copyFrames(w io.Writer, r io.Reader) error {
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return errors.Wrapf(ErrProtocol, "cat-log stream: %v", err)
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n == 0 {
			return nil
		}
		if n > maxFrame {
			return errors.Wrapf(ErrProtocol, "cat-log frame of %d bytes", n)
		}
		if _, err := io.CopyN(w, r, int64(n)); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return errors.Wrapf(ErrProtocol, "cat-log stream: %v", err)
			}
			return errors.Wrap(err, "devhost: cat-log output")
		}
	}
}
