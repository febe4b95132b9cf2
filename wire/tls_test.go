package wire

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// selfSigned returns a server certificate for 127.0.0.1 and a pool that
// trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "walb test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, pool
}

func TestTLS(t *testing.T) {
	ctx := testCtx(t)
	cert, pool := selfSigned(t)
	sopts := &Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}}
	copts := &Options{TLS: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}
	c, s := pair(t, sopts, copts, "secure", "arg")
	require.Equal(t, []string{"arg"}, s.Args())

	data := randomBytes(3<<20+5, 9)
	go func() {
		_ = c.SendString(ctx, "over tls")
		w := c.NewStreamWriter(ctx, 0)
		_, _ = w.Write(data)
		_ = w.Close()
	}()
	str, err := s.RecvString(ctx)
	require.NoError(t, err)
	require.Equal(t, "over tls", str)
	got, err := io.ReadAll(s.NewStreamReader(ctx))
	require.NoError(t, err)
	require.Equal(t, sha256.Sum256(data), sha256.Sum256(got))

	// Finish over TLS delivers the last frames.
	finished := make(chan error, 1)
	go func() {
		_ = s.SendOK(ctx)
		finished <- s.Finish(ctx)
	}()
	require.NoError(t, c.ExpectOK(ctx))
	require.NoError(t, c.Close())
	require.NoError(t, <-finished)
}

func TestTLSRefusals(t *testing.T) {
	cert, _ := selfSigned(t)
	sopts := &Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, IOTimeout: 2 * time.Second}
	l, ch := testListener(t, sopts, nil)

	// A client that does not trust the certificate.
	_, err := Dial(testCtx(t), l.Addr().String(), "cli", "x", &Options{TLS: &tls.Config{}})
	require.Error(t, err)
	require.Contains(t, err.Error(), "tls handshake")
	r := <-ch
	require.Error(t, r.err)

	// A plain client against a TLS server.
	_, err = Dial(testCtx(t), l.Addr().String(), "cli", "x", &Options{IOTimeout: 2 * time.Second})
	require.Error(t, err)
	r = <-ch
	require.Error(t, r.err)
}
