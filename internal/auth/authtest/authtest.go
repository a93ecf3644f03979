// Package authtest makes throwaway certificates for tests of TLS and mTLS:
// a certificate authority and the server and client certificates it signs,
// in memory and as PEM files, generated with crypto/x509 (no openssl).
//
//	ca := authtest.NewCA(t, "test CA")
//	srv := ca.Issue(t, authtest.Leaf{CommonName: "retryd", IPs: []net.IP{net.IPv6loopback, net.IPv4(127, 0, 0, 1)}})
//	certFile, keyFile := srv.WriteFiles(t, dir, "server")
package authtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// validity of every certificate made here: long enough for any test run,
// short enough that a leaked test key is worthless soon.
const validity = 24 * time.Hour

// CA is a throwaway certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// PEM is the CA certificate, PEM-encoded.
	PEM []byte
}

// NewCA makes a self-signed CA named name (its subject CN).
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("authtest: create CA: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("authtest: parse CA: %v", err)
	}
	return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Pool is a cert pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// WriteFile writes the CA certificate to dir/name and returns the path.
func (ca *CA) WriteFile(t testing.TB, dir, name string) string {
	t.Helper()
	return writeFile(t, filepath.Join(dir, name), ca.PEM)
}

// Leaf describes a certificate to issue. Every leaf is good for both
// server and client authentication, so that one pair can serve either end.
type Leaf struct {
	CommonName string
	DNSNames   []string
	IPs        []net.IP
	// URIs are URI SANs such as spiffe://cluster.local/ns/jobs/sa/worker.
	URIs   []string
	Emails []string
	// NotAfter overrides the expiry (an expired certificate for negative tests).
	NotAfter time.Time
}

// Pair is an issued certificate and its key.
type Pair struct {
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte
	TLS     tls.Certificate
}

// Issue signs a new certificate for leaf.
func (ca *CA) Issue(t testing.TB, leaf Leaf) *Pair {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:   serial(t),
		Subject:        pkix.Name{CommonName: leaf.CommonName},
		NotBefore:      time.Now().Add(-time.Hour),
		NotAfter:       time.Now().Add(validity),
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:       leaf.DNSNames,
		IPAddresses:    leaf.IPs,
		EmailAddresses: leaf.Emails,
	}
	if !leaf.NotAfter.IsZero() {
		tmpl.NotAfter = leaf.NotAfter
	}
	for _, s := range leaf.URIs {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatalf("authtest: URI SAN %q: %v", s, err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatalf("authtest: issue %q: %v", leaf.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("authtest: parse %q: %v", leaf.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("authtest: marshal key: %v", err)
	}
	p := &Pair{
		Cert:    cert,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	p.TLS, err = tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		t.Fatalf("authtest: key pair: %v", err)
	}
	return p
}

// Server issues a server certificate for the loopback addresses and
// "localhost", the names a test dials.
func (ca *CA) Server(t testing.TB) *Pair {
	t.Helper()
	return ca.Issue(t, Leaf{
		CommonName: "localhost",
		DNSNames:   []string{"localhost"},
		IPs:        []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	})
}

// WriteFiles writes the certificate and key to dir/<base>.pem and
// dir/<base>-key.pem (the key readable by the owner only) and returns the
// two paths.
func (p *Pair) WriteFiles(t testing.TB, dir, base string) (certFile, keyFile string) {
	t.Helper()
	return writeFile(t, filepath.Join(dir, base+".pem"), p.CertPEM),
		writeFile(t, filepath.Join(dir, base+"-key.pem"), p.KeyPEM)
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("authtest: generate key: %v", err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("authtest: serial: %v", err)
	}
	return n
}

func writeFile(t testing.TB, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatalf("authtest: %v", err)
	}
	return path
}
