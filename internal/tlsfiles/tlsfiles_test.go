package tlsfiles

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/internal/auth/authtest"
	"github.com/retryd/retryd/internal/reload"
)

func TestCertPool(t *testing.T) {
	dir := t.TempDir()
	ca := authtest.NewCA(t, "ca")
	pool, err := CertPool("--x-ca", ca.WriteFile(t, dir, "ca.pem"))
	require.NoError(t, err)
	require.True(t, pool.Equal(ca.Pool()))

	_, err = CertPool("--x-ca", filepath.Join(dir, "none.pem"))
	require.ErrorIs(t, err, os.ErrNotExist)
	require.ErrorContains(t, err, "--x-ca: ")
	junk := filepath.Join(dir, "junk.pem")
	require.NoError(t, os.WriteFile(junk, []byte("not PEM"), 0o600))
	_, err = CertPool("--x-ca", junk)
	require.EqualError(t, err, "--x-ca "+junk+": no PEM certificate in it")
}

func TestKeyPair(t *testing.T) {
	dir := t.TempDir()
	ca := authtest.NewCA(t, "ca")
	a := ca.Issue(t, authtest.Leaf{CommonName: "a"})
	certFile, keyFile := a.WriteFiles(t, dir, "a")
	v, err := KeyPair("test pair", "--c", certFile, "--k", keyFile, reload.Options{})
	require.NoError(t, err)
	require.Equal(t, a.TLS.Certificate, v.Get().Certificate)

	// A certificate with another one's key names both settings.
	_, otherKey := ca.Issue(t, authtest.Leaf{CommonName: "b"}).WriteFiles(t, dir, "b")
	_, err = KeyPair("test pair", "--c", certFile, "--k", otherKey, reload.Options{})
	require.ErrorContains(t, err, "--c "+certFile+" / --k "+otherKey+": tls: private key does not match public key")
}
