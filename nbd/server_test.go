package nbd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestShutdownWaitsForInFlightRequests(t *testing.T) {
	gate := newGateBackend(1 << 20)
	copy(gate.data[512:], "survives shutdown")
	srv := NewServer(Options{Logger: testLogger(t)})
	require.NoError(t, srv.AddExport("g", gate, false, ""))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), l) }()

	r := dialRaw(t, l.Addr().String())
	r.start()
	r.goExport("g")
	r.request(0, cmdRead, 1, 512, 17, nil)
	<-gate.entered

	shutdown := make(chan error, 1)
	go func() { shutdown <- srv.Shutdown(context.Background()) }()
	require.ErrorIs(t, <-served, ErrServerClosed, "listener closes first")
	select {
	case err := <-shutdown:
		t.Fatalf("Shutdown returned (%v) while a request was in flight", err)
	default:
	}
	close(gate.release)
	r.expectReply(1, 0)
	require.Equal(t, []byte("survives shutdown"), r.read(17))
	r.expectClosed()
	require.NoError(t, <-shutdown)

	_, err = net.DialTimeout("tcp", l.Addr().String(), time.Second)
	require.Error(t, err, "no longer listening")
	require.ErrorIs(t, srv.Serve(context.Background(), l), ErrServerClosed)
	c1, c2 := net.Pipe()
	defer c2.Close()
	require.ErrorIs(t, srv.ServeConn(context.Background(), c1), ErrServerClosed)
}

func TestShutdownDropsNegotiatingClients(t *testing.T) {
	srv := NewServer(Options{Logger: testLogger(t)})
	require.NoError(t, srv.AddExport("d", NewMemoryBackend(4096), false, ""))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(context.Background(), l) }()
	r := dialRaw(t, l.Addr().String())
	r.start()
	r.option(optList, nil)
	for r.optReply().typ != repAck {
	}
	require.NoError(t, srv.Shutdown(context.Background()))
	r.expectClosed()
}

func TestShutdownContextExpiry(t *testing.T) {
	gate := newGateBackend(1 << 20)
	srv := NewServer(Options{Logger: testLogger(t)})
	require.NoError(t, srv.AddExport("g", gate, false, ""))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(context.Background(), l) }()
	r := dialRaw(t, l.Addr().String())
	r.start()
	r.goExport("g")
	r.request(0, cmdRead, 1, 0, 512, nil)
	<-gate.entered

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, srv.Shutdown(ctx), context.Canceled)
	r.expectClosed()
	close(gate.release) // let the stuck backend call return
	require.NoError(t, srv.Shutdown(context.Background()), "a second Shutdown waits for the rest")
}

func TestServeContextCancelClosesConnections(t *testing.T) {
	srv := NewServer(Options{Logger: testLogger(t)})
	require.NoError(t, srv.AddExport("d", NewMemoryBackend(4096), false, ""))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, l) }()
	c := dialClient(t, l.Addr().String(), ClientOptions{Export: "d"})
	cancel()
	require.ErrorIs(t, <-served, context.Canceled)
	select {
	case <-c.done: // the client's reader saw the server close the connection
	case <-time.After(10 * time.Second):
		t.Fatal("connection still open after the Serve context ended")
	}
	_, err = c.ReadAt(make([]byte, 1), 0)
	require.ErrorIs(t, err, ErrClientClosed)
	require.NoError(t, srv.Shutdown(context.Background()))
}

func TestRemoveExport(t *testing.T) {
	gate := newGateBackend(1 << 20)
	keep := NewMemoryBackend(4096)
	srv, addr := startServer(t, Options{}, testExport{name: "gone", backend: gate}, testExport{name: "keep", backend: keep})

	user := dialRaw(t, addr)
	user.start()
	user.goExport("gone")
	other := dialClient(t, addr, ClientOptions{Export: "keep"})
	user.request(0, cmdRead, 9, 0, 512, nil)
	<-gate.entered

	removed := make(chan error, 1)
	go func() { removed <- srv.RemoveExport(context.Background(), "gone") }()
	close(gate.release)
	user.expectReply(9, 0)
	user.read(512)
	user.expectClosed()
	require.NoError(t, <-removed)

	require.Equal(t, []string{"keep"}, srv.Exports())
	_, err := other.WriteAt([]byte("still here"), 0)
	require.NoError(t, err, "other exports are unaffected")

	r := dialRaw(t, addr)
	r.start()
	r.option(optGo, infoGoData("gone"))
	r.expectOptErr(optGo, repErrUnknown)

	require.ErrorIs(t, srv.RemoveExport(context.Background(), "gone"), ErrUnknownExport)
	require.NoError(t, srv.AddExport("gone", NewMemoryBackend(512), false, "again"), "a removed name can be reused")
}

func TestAddExportValidation(t *testing.T) {
	srv := NewServer(Options{Logger: testLogger(t)})
	require.NoError(t, srv.AddExport("a", NewMemoryBackend(1), false, ""))
	require.ErrorIs(t, srv.AddExport("a", NewMemoryBackend(1), false, ""), ErrExportExists)
	require.ErrorIs(t, srv.AddExport("bad\x00name", NewMemoryBackend(1), false, ""), ErrInvalidName)
	require.ErrorIs(t, srv.AddExport(strings.Repeat("x", 4097), NewMemoryBackend(1), false, ""), ErrInvalidName)
	require.ErrorIs(t, srv.AddExport("d", NewMemoryBackend(1), false, strings.Repeat("x", 5000)), ErrInvalidName)
	require.Error(t, srv.AddExport("nil", nil, false, ""))
	require.NoError(t, srv.AddExport(strings.Repeat("x", 4096), NewMemoryBackend(1), false, ""))
}

func TestMaxConnsQueuesExtraClients(t *testing.T) {
	_, addr := startServer(t, Options{MaxConns: 1}, testExport{name: "d", backend: NewMemoryBackend(4096)})
	first := dialRaw(t, addr)
	first.greeting()

	second, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer second.Close()
	require.NoError(t, second.SetReadDeadline(time.Now().Add(300*time.Millisecond)))
	_, err = second.Read(make([]byte, 1))
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	require.True(t, ne.Timeout(), "second client must wait while the first holds the only slot")

	require.NoError(t, first.c.Close())
	require.NoError(t, second.SetReadDeadline(time.Now().Add(10*time.Second)))
	r := &rawClient{t: t, c: second, br: newReader(second)}
	require.Equal(t, handshakeFlagFixedNewstyle|handshakeFlagNoZeroes, r.greeting())
}

func TestUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := NewServer(Options{Logger: testLogger(t)})
	mem := NewMemoryBackend(1 << 20)
	require.NoError(t, srv.AddExport("u", mem, false, ""))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), l) }()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix", sock, ClientOptions{Export: "u"})
	require.NoError(t, err)
	_, err = c.WriteAt([]byte("over a unix socket"), 100)
	require.NoError(t, err)
	require.NoError(t, c.Flush())
	require.NoError(t, c.Close())
	require.Equal(t, []byte("over a unix socket"), mem.Bytes()[100:118])

	require.NoError(t, srv.Shutdown(ctx))
	require.ErrorIs(t, <-served, ErrServerClosed)
}

// testTLSConfigs returns a server config with a fresh self-signed
// certificate for 127.0.0.1 and a client config trusting it.
func testTLSConfigs(t testing.TB) (*tls.Config, *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "nbd test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	client := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	return server, client
}

func TestTLS(t *testing.T) {
	serverTLS, clientTLS := testTLSConfigs(t)
	mem := NewMemoryBackend(1 << 20)
	_, addr := startServer(t, Options{TLS: serverTLS}, testExport{name: "d", backend: mem, desc: "secret"})

	t.Run("client upgrades", func(t *testing.T) {
		c := dialClient(t, addr, ClientOptions{Export: "d", TLS: clientTLS})
		data := randomBytes(1, 100000)
		_, err := c.WriteAt(data, 5000)
		require.NoError(t, err)
		got := make([]byte, len(data))
		_, err = c.ReadAt(got, 5000)
		require.NoError(t, err)
		require.Equal(t, data, got)
	})
	t.Run("plaintext still allowed", func(t *testing.T) {
		c := dialClient(t, addr, ClientOptions{Export: "d"})
		_, err := c.ReadAt(make([]byte, 10), 0)
		require.NoError(t, err)
	})
	t.Run("list over TLS", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		list, err := ListExports(context.Background(), conn, clientTLS)
		require.NoError(t, err)
		require.Equal(t, []ExportInfo{{Name: "d", Description: "secret"}}, list)
	})
	t.Run("wrong certificate fails", func(t *testing.T) {
		_, otherClient := testTLSConfigs(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := Dial(ctx, "tcp", addr, ClientOptions{Export: "d", TLS: otherClient})
		require.Error(t, err)
	})
	t.Run("second STARTTLS and STARTTLS with data", func(t *testing.T) {
		r := dialRaw(t, addr)
		r.start()
		r.option(optStartTLS, []byte("x"))
		r.expectOptErr(optStartTLS, repErrInvalid)
		r.option(optStartTLS, nil)
		rep := r.optReply()
		require.Equal(t, repAck, rep.typ)
		tc := tls.Client(r.c, clientTLS)
		require.NoError(t, tc.Handshake())
		tr := &rawClient{t: t, c: tc, br: newReader(tc)}
		tr.option(optStartTLS, nil)
		tr.expectOptErr(optStartTLS, repErrInvalid)
		size, _ := tr.goExport("d")
		require.Equal(t, uint64(1<<20), size)
	})
	t.Run("not fixed newstyle", func(t *testing.T) {
		r := dialRaw(t, addr)
		r.greeting()
		r.clientFlags(clientFlagNoZeroes)
		r.option(optStartTLS, nil)
		r.expectOptErr(optStartTLS, repErrPolicy)
	})
}

func TestRequireTLS(t *testing.T) {
	serverTLS, clientTLS := testTLSConfigs(t)
	_, addr := startServer(t, Options{TLS: serverTLS, RequireTLS: true},
		testExport{name: "d", backend: NewMemoryBackend(1 << 20)})

	r := dialRaw(t, addr)
	r.start()
	for _, opt := range []uint32{optGo, optInfo, optList, optStructuredReply, 0x9999} {
		r.option(opt, infoGoData("d"))
		r.expectOptErr(opt, repErrTLSReqd)
	}
	r.option(optExportName, []byte("d"))
	r.expectClosed()

	r = dialRaw(t, addr)
	r.greeting()
	r.clientFlags(0)
	r.expectClosed()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Dial(ctx, "tcp", addr, ClientOptions{Export: "d"})
	require.ErrorIs(t, err, ErrTLSRequired)
	c := dialClient(t, addr, ClientOptions{Export: "d", TLS: clientTLS})
	require.Equal(t, int64(1<<20), c.Size())
}

func TestRequireTLSWithoutConfig(t *testing.T) {
	srv := NewServer(Options{Logger: testLogger(t), RequireTLS: true})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	require.ErrorIs(t, srv.Serve(context.Background(), l), ErrTLSRequired)
	c1, c2 := net.Pipe()
	defer c2.Close()
	require.ErrorIs(t, srv.ServeConn(context.Background(), c1), ErrTLSRequired)
}

// oneByteConn delivers reads one byte at a time and splits writes into
// single bytes, like a network that fragments everything.
type oneByteConn struct{ net.Conn }

func (c oneByteConn) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return c.Conn.Read(p)
}

func (c oneByteConn) Write(p []byte) (int, error) {
	for i := range p {
		if _, err := c.Conn.Write(p[i : i+1]); err != nil {
			return i, err
		}
	}
	return len(p), nil
}

func TestFragmentedStreams(t *testing.T) {
	mem := NewMemoryBackend(1 << 20)
	srv := NewServer(Options{Logger: testLogger(t)})
	require.NoError(t, srv.AddExport("d", mem, false, "fragmented"))
	client, server := net.Pipe()
	served := make(chan error, 1)
	// Both ends see one-byte reads and writes.
	go func() { served <- srv.ServeConn(context.Background(), oneByteConn{server}) }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := NewClient(ctx, oneByteConn{client}, ClientOptions{Export: "d"})
	require.NoError(t, err)
	require.Equal(t, "fragmented", c.Info().Description)
	data := randomBytes(71, 3000)
	_, err = c.WriteAt(data, 777)
	require.NoError(t, err)
	got := make([]byte, len(data))
	_, err = c.ReadAt(got, 777)
	require.NoError(t, err)
	require.Equal(t, data, got)
	require.NoError(t, c.Close())
	require.NoError(t, <-served)
}
