package devhost

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// FuzzRequestLine feeds arbitrary bytes to the daemon's request parser:
// it must never panic, and a request it accepts must name a known
// operation with every field that operation needs and no other, and survive
// a round trip through JSON unchanged.
func FuzzRequestLine(f *testing.F) {
	f.Add([]byte(`{"v":1,"op":"get-oldest-lsid","name":"vol0"}` + "\n"))
	f.Add([]byte(`{"v":1,"op":"create-wdev","name":"vol0","log_device":"/l","data_device":"/d","options":{"max_logpack_kb":32}}` + "\n"))
	f.Add([]byte(`{"v":1,"op":"cat-log","name":"vol0","begin":0,"end":18446744073709551615}` + "\n"))
	f.Add([]byte(`{"v":1,"op":"set-oldest-lsid","name":"vol0","lsid":1}{}` + "\n"))
	f.Add([]byte(`{"v":2}` + "\n"))
	f.Add([]byte(`{"v":1,"op":"get-lsids","name":"vol0"}` + "\n"))
	f.Add([]byte(`{"v":1,"op":"info","name":"vol0","force":true}` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(data), 16)
		line, err := readLine(br, 4096)
		if err != nil {
			return
		}
		var req Request
		if decodeStrict(line, &req) != nil {
			return
		}
		spec, err := req.check()
		if err != nil {
			return
		}
		if _, ok := ops[req.Op]; !ok {
			t.Fatalf("accepted unknown op %q", req.Op)
		}
		have := req.present()
		if have&spec.need != spec.need || have&^(spec.need|spec.allow) != 0 {
			t.Fatalf("accepted %q with fields %b (need %b, allow %b)", req.Op, have, spec.need, spec.allow)
		}
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		var again Request
		if err := decodeStrict(b, &again); err != nil {
			t.Fatalf("re-encoded request does not parse: %v", err)
		}
		if again.present() != have || again.Op != req.Op || again.Name != req.Name {
			t.Fatalf("round trip changed the request: %s", b)
		}
	})
}

// FuzzFrames feeds arbitrary bytes to the cat-log stream decoder: it must
// never panic nor produce more data than it was given.
func FuzzFrames(f *testing.F) {
	f.Add([]byte{0, 0, 0, 3, 'a', 'b', 'c', 0, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		err := copyFrames(&out, bytes.NewReader(data))
		if out.Len() > len(data) {
			t.Fatalf("%d bytes out of %d in", out.Len(), len(data))
		}
		if err == nil && out.Len()+4 > len(data) {
			t.Fatalf("a complete stream needs an end frame")
		}
	})
}

// FuzzRegistry feeds arbitrary registry files to LoadRegistry: no panic,
// and an accepted registry writes back to an equal one.
func FuzzRegistry(f *testing.F) {
	f.Add([]byte(`{"version":1,"devices":[{"name":"vol0","log_device":"/l","data_device":"/d","options":{"max_pending_mb":64}}]}`))
	f.Add([]byte(`{"version":1,"devices":[]}`))
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, RegistryFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := LoadRegistry(dir)
		if err != nil {
			return
		}
		if err := r.save(); err != nil {
			t.Fatal(err)
		}
		r2, err := LoadRegistry(dir)
		if err != nil {
			t.Fatalf("written registry does not load: %v", err)
		}
		a, _ := json.Marshal(r.Entries())
		b, _ := json.Marshal(r2.Entries())
		if !bytes.Equal(a, b) {
			t.Fatalf("registry changed on rewrite: %s vs %s", a, b)
		}
	})
}

// FuzzDeviceStatus feeds arbitrary JSON to the decoder of info answers: no
// panic, and what it accepts encodes back to a value that decodes equal.
func FuzzDeviceStatus(f *testing.F) {
	f.Add([]byte(`{"name":"vol0","uuid":"dead0000000000000000000000000001","salt":1,"pbs":512,"size_lb":8,"log_capacity_pb":2,"overflow":true,"frozen":false}`))
	f.Add([]byte(`{"name":"vol0","uuid":"DEAD0000000000000000000000000001"}`))
	f.Add([]byte(`{"uuid":[1,2]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s DeviceStatus
		if json.Unmarshal(data, &s) != nil {
			return
		}
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		var again DeviceStatus
		if err := json.Unmarshal(b, &again); err != nil {
			t.Fatalf("re-encoded status does not parse: %v: %s", err, b)
		}
		if again != s {
			t.Fatalf("round trip changed the status: %+v vs %+v", s, again)
		}
	})
}
