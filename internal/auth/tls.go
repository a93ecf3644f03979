package auth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/retryd/retryd/internal/tlsfiles"
)

// serverTLS is the listener's TLS configuration: TLS 1.2 or later (gRPC's
// floor), the current key pair on every handshake (so that a renewed
// certificate is served without a restart), and with a client CA,
// VerifyClientCertIfGiven — a certificate, when sent, must chain to the CA,
// but a caller may instead authenticate with a token, and health probes
// need neither. The client CA is read once: changing it needs a restart.
func (a *Authenticator) serverTLS() (*tls.Config, error) {
	tc := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return a.cert.Get(), nil
		},
	}
	if a.cfg.TLSClientCA != "" {
		pool, err := tlsfiles.CertPool("--tls-client-ca", a.cfg.TLSClientCA)
		if err != nil {
			return nil, err
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return tc, nil
}

// certIdentity maps the verified client certificate of the call's
// connection to a role: admin when one of its names matches
// TLSAdminNames, else worker when TLSWorkerNames is empty or matches. false
// when the connection carries no verified certificate.
func (a *Authenticator) certIdentity(ctx context.Context) (Identity, bool, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, false, nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Identity{}, false, nil
	}
	names := certNames(info.State.VerifiedChains[0][0])
	if n, ok := matchName(a.adminNames, names); ok {
		return Identity{Role: RoleAdmin, Name: "client certificate " + n}, true, nil
	}
	if len(a.workerNames) == 0 {
		return Identity{Role: RoleWorker, Name: "client certificate " + firstOr(names, "(no name)")}, true, nil
	}
	if n, ok := matchName(a.workerNames, names); ok {
		return Identity{Role: RoleWorker, Name: "client certificate " + n}, true, nil
	}
	return Identity{}, false, status.Errorf(codes.Unauthenticated,
		"the client certificate (%s) matches neither --tls-admin-names nor --tls-worker-names", strings.Join(shorten(names, 4), ", "))
}

// certNames are the names a rule can match: the subject common name, then
// the DNS, URI and email SANs.
func certNames(c *x509.Certificate) []string {
	var names []string
	if c.Subject.CommonName != "" {
		names = append(names, c.Subject.CommonName)
	}
	names = append(names, c.DNSNames...)
	for _, u := range c.URIs {
		names = append(names, u.String())
	}
	return append(names, c.EmailAddresses...)
}

// matchName returns the first certificate name that a pattern matches: a
// pattern ending in '*' matches names it prefixes, any other pattern matches
// itself only.
func matchName(patterns, names []string) (string, bool) {
	for _, n := range names {
		for _, p := range patterns {
			if prefix, ok := strings.CutSuffix(p, "*"); ok {
				if strings.HasPrefix(n, prefix) {
					return n, true
				}
			} else if n == p {
				return n, true
			}
		}
	}
	return "", false
}

func firstOr(names []string, def string) string {
	if len(names) == 0 {
		return def
	}
	return names[0]
}

func shorten(names []string, n int) []string {
	if len(names) == 0 {
		return []string{"no names"}
	}
	if len(names) > n {
		return append(names[:n:n], fmt.Sprintf("and %d more", len(names)-n))
	}
	return names
}
