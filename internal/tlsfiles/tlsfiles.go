// Package tlsfiles reads TLS material from PEM files, for retryd's own
// listener and for its connection to Redis: a CA bundle, read once, and a
// key pair that is re-read when it is renewed (cert-manager, Vault and
// Kubernetes Secrets rotate it in place).
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/retryd/retryd/internal/reload"
)

// CertPool reads a PEM bundle of CA certificates. flag names the setting in
// errors ("--tls-client-ca").
func CertPool(flag, path string) (*x509.CertPool, error) {
	pemData, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, fmt.Errorf("%s %s: no PEM certificate in it", flag, path)
	}
	return pool, nil
}

// KeyPair reads a certificate (chain) and its private key, and keeps them
// current (see reload.Value). certFlag and keyFlag name the settings in
// errors; what names the pair in log lines.
func KeyPair(what, certFlag, certFile, keyFlag, keyFile string, o reload.Options) (*reload.Value[*tls.Certificate], error) {
	build := func(c [][]byte) (*tls.Certificate, error) {
		pair, err := tls.X509KeyPair(c[0], c[1])
		if err != nil {
			return nil, fmt.Errorf("%s %s / %s %s: %w", certFlag, certFile, keyFlag, keyFile, err)
		}
		return &pair, nil
	}
	return reload.New(what, []string{certFile, keyFile}, build, o)
}
