package auth

import (
	"crypto/tls"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/retryd/retryd/internal/auth/authtest"
)

// tlsSetup is a server with TLS and a client CA, and the CA's pieces.
type tlsSetup struct {
	*bundle
	ca                *authtest.CA
	certFile, keyFile string
}

func setupTLS(t *testing.T, cfg Config) *tlsSetup {
	t.Helper()
	dir := t.TempDir()
	ca := authtest.NewCA(t, "retryd test client and server CA")
	certFile, keyFile := ca.Server(t).WriteFiles(t, dir, "server")
	cfg.TLSCert, cfg.TLSKey = certFile, keyFile
	cfg.TLSClientCA = ca.WriteFile(t, dir, "ca.pem")
	return &tlsSetup{bundle: setup(t, cfg), ca: ca, certFile: certFile, keyFile: keyFile}
}

// client is a TLS client config trusting the CA, presenting leaf (if any).
func (s *tlsSetup) client(leaf *authtest.Pair) *tls.Config {
	tc := &tls.Config{RootCAs: s.ca.Pool(), MinVersion: tls.VersionTLS12}
	if leaf != nil {
		tc.Certificates = []tls.Certificate{leaf.TLS}
	}
	return tc
}

func TestClientCertificates(t *testing.T) {
	t.Parallel()
	s := setupTLS(t, Config{TLSAdminNames: []string{"ops-admin", "spiffe://example.org/ns/ops/*"}})
	worker := s.ca.Issue(t, authtest.Leaf{CommonName: "extraction-worker"})
	adminByCN := s.ca.Issue(t, authtest.Leaf{CommonName: "ops-admin"})
	adminByURI := s.ca.Issue(t, authtest.Leaf{CommonName: "oncall", URIs: []string{"spiffe://example.org/ns/ops/sa/oncall"}})
	notAdmin := s.ca.Issue(t, authtest.Leaf{CommonName: "x", DNSNames: []string{"ops-admin.evil"}, URIs: []string{"spiffe://example.org/ns/opsx/sa/a"}})

	for _, tc := range []struct {
		name string
		leaf *authtest.Pair
		want map[string]outcome
	}{
		{"no certificate", nil, map[string]outcome{
			"RetryService/ReportSuccess": unauth, "AdminService/GetJob": unauth, "Health/Check": public, "ServerReflection": unauth,
		}},
		{"worker certificate", worker, map[string]outcome{
			"RetryService/ReportSuccess": ok("worker|client certificate extraction-worker"),
			"RetryService/Dispatch":      ok("worker|client certificate extraction-worker"),
			"AdminService/GetJob":        denied, "Health/Check": public, "ServerReflection": public,
		}},
		{"admin by common name", adminByCN, map[string]outcome{
			"RetryService/ReportSuccess": ok("admin|client certificate ops-admin"),
			"AdminService/GetJob":        ok("admin|client certificate ops-admin"),
		}},
		{"admin by URI SAN prefix", adminByURI, map[string]outcome{
			"AdminService/GetJob": ok("admin|client certificate spiffe://example.org/ns/ops/sa/oncall"),
		}},
		{"near misses are workers", notAdmin, map[string]outcome{
			"RetryService/ReportSuccess": ok("worker|client certificate x"), "AdminService/GetJob": denied,
		}},
	} {
		conn := s.dial(s.client(tc.leaf))
		for method, want := range tc.want {
			id, code, msg := s.call(conn, method)
			require.Equal(t, want.code, code, "%s: %s: %s", tc.name, method, msg)
			if code == codes.OK {
				require.Equal(t, want.id, id, "%s: %s", tc.name, method)
			}
		}
	}
	_, _, msg := s.call(s.dial(s.client(nil)), "RetryService/ReportSuccess")
	require.Equal(t, "no credential: connect with a client certificate signed by retryd's client CA", msg)
}

// TestClientCertificatesRefused: a certificate of another CA, an expired
// one, and plaintext never get a call through.
func TestClientCertificatesRefused(t *testing.T) {
	t.Parallel()
	s := setupTLS(t, Config{})
	stranger := authtest.NewCA(t, "someone else's CA").Issue(t, authtest.Leaf{CommonName: "extraction-worker"})
	expired := s.ca.Issue(t, authtest.Leaf{CommonName: "extraction-worker", NotAfter: time.Now().Add(-time.Minute)})
	// Go's client does not even send a certificate that the server's CA
	// list does not name: no credential.
	_, code, msg := s.call(s.dial(s.client(stranger)), "RetryService/ReportSuccess")
	require.Equal(t, codes.Unauthenticated, code, msg)

	// Sent anyway, the handshake fails.
	forced := s.client(nil)
	forced.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &stranger.TLS, nil }
	for name, conn := range map[string]*grpc.ClientConn{
		"other CA":  s.dial(forced),
		"expired":   s.dial(s.client(expired)),
		"plaintext": s.dial(nil),
	} {
		_, code, msg := s.call(conn, "RetryService/ReportSuccess")
		require.Equal(t, codes.Unavailable, code, "%s: %s", name, msg)
	}
}

// TestWorkerNames: with --tls-worker-names, a certificate that matches no
// rule authenticates as no one.
func TestWorkerNames(t *testing.T) {
	t.Parallel()
	s := setupTLS(t, Config{TLSAdminNames: []string{"ops-admin"}, TLSWorkerNames: []string{"spiffe://example.org/ns/jobs/*", "kg-worker"}})
	for _, tc := range []struct {
		leaf authtest.Leaf
		want outcome
	}{
		{authtest.Leaf{CommonName: "a", URIs: []string{"spiffe://example.org/ns/jobs/sa/extract"}}, ok("worker|client certificate spiffe://example.org/ns/jobs/sa/extract")},
		{authtest.Leaf{CommonName: "kg-worker"}, ok("worker|client certificate kg-worker")},
		{authtest.Leaf{CommonName: "b", DNSNames: []string{"kg-worker"}}, ok("worker|client certificate kg-worker")},
		{authtest.Leaf{CommonName: "ops-admin"}, ok("admin|client certificate ops-admin")},
		{authtest.Leaf{CommonName: "intruder", Emails: []string{"i@example.org"}}, unauth},
	} {
		conn := s.dial(s.client(s.ca.Issue(t, tc.leaf)))
		id, code, msg := s.call(conn, "RetryService/ReportSuccess")
		require.Equal(t, tc.want.code, code, "%s: %s", tc.leaf.CommonName, msg)
		require.Equal(t, tc.want.id, id)
		if code != codes.OK {
			require.Equal(t, "the client certificate (intruder, i@example.org) matches neither --tls-admin-names nor --tls-worker-names", msg)
		}
	}
}

// TestTokensAndCertificates: a header, when present, decides; without one,
// the certificate does.
func TestTokensAndCertificates(t *testing.T) {
	t.Parallel()
	s := setupTLS(t, Config{WorkerTokens: []string{workerToken}, AdminTokens: []string{adminToken}})
	worker := s.dial(s.client(s.ca.Issue(t, authtest.Leaf{CommonName: "extraction-worker"})))
	anonymous := s.dial(s.client(nil))
	for _, tc := range []struct {
		conn   *grpc.ClientConn
		method string
		header []string
		want   outcome
	}{
		{worker, "RetryService/ReportSuccess", nil, ok("worker|client certificate extraction-worker")},
		{worker, "AdminService/GetJob", []string{"Bearer " + adminToken}, ok("admin|RETRYD_ADMIN_TOKENS item 1")},
		{worker, "RetryService/ReportSuccess", []string{"Bearer " + otherToken}, unauth},
		{anonymous, "RetryService/ReportSuccess", []string{"Bearer " + workerToken}, ok("worker|RETRYD_WORKER_TOKENS item 1")},
		{anonymous, "RetryService/ReportSuccess", nil, unauth},
	} {
		id, code, msg := s.call(tc.conn, tc.method, tc.header...)
		require.Equal(t, tc.want.code, code, msg)
		require.Equal(t, tc.want.id, id)
	}
	_, _, msg := s.call(anonymous, "RetryService/ReportSuccess")
	require.Equal(t, `no credential: send the header "authorization: Bearer <token>" or a client certificate`, msg)
}

// TestTLSWithoutClientCA: TLS alone encrypts; the tokens authenticate.
func TestTLSWithoutClientCA(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := authtest.NewCA(t, "server CA")
	certFile, keyFile := ca.Server(t).WriteFiles(t, dir, "server")
	b := setup(t, Config{TLSCert: certFile, TLSKey: keyFile, AdminTokens: []string{adminToken}})
	conn := b.dial(&tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12})
	_, code, _ := b.call(conn, "AdminService/GetJob")
	require.Equal(t, codes.Unauthenticated, code)
	id, code, msg := b.call(conn, "AdminService/GetJob", "Bearer "+adminToken)
	require.Equal(t, codes.OK, code, msg)
	require.Equal(t, "admin|RETRYD_ADMIN_TOKENS item 1", id)

	// No client CA, no tokens: TLS only, every call passes.
	b = setup(t, Config{TLSCert: certFile, TLSKey: keyFile})
	_, code, msg = b.call(b.dial(&tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}), "AdminService/GetJob")
	require.Equal(t, codes.OK, code, msg)
}

// TestServerCertificateReload: a renewed key pair is served to new
// connections after the next check, without a restart; a half-written one
// (new certificate, old key) is not.
func TestServerCertificateReload(t *testing.T) {
	t.Parallel()
	s := setupTLS(t, Config{})
	leaf := s.ca.Issue(t, authtest.Leaf{CommonName: "w"})
	served := func() string {
		conn := s.dial(s.client(leaf))
		var p peer.Peer
		_, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
		require.NoError(t, err)
		return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].SerialNumber.String()
	}
	first := served()
	renewed := s.ca.Server(t)
	tmp := t.TempDir()
	newCert, newKey := renewed.WriteFiles(t, tmp, "server")

	// The certificate arrives before its key: rejected, the old pair stays.
	require.NoError(t, renameInto(newCert, s.certFile))
	s.clock.Advance(DefaultReloadInterval)
	require.Equal(t, first, served())
	require.Contains(t, s.logs.String(), "changed TLS certificate and key rejected")

	require.NoError(t, renameInto(newKey, s.keyFile))
	s.clock.Advance(DefaultReloadInterval)
	require.Equal(t, renewed.Cert.SerialNumber.String(), served())
	require.Contains(t, s.logs.String(), "reloaded TLS certificate and key")
}

func TestServerTLSErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := authtest.NewCA(t, "ca")
	certFile, keyFile := ca.Server(t).WriteFiles(t, dir, "server")
	notPEM := filepath.Join(dir, "server-key.pem") // a key, not a certificate
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{TLSCert: certFile, TLSKey: filepath.Join(dir, "missing.pem")}, "TLS key pair: open "},
		{Config{TLSCert: keyFile, TLSKey: keyFile}, "--tls-cert " + keyFile + " / --tls-key " + keyFile},
		{Config{TLSCert: certFile, TLSKey: keyFile, TLSClientCA: filepath.Join(dir, "none.pem")}, "--tls-client-ca: open "},
		{Config{TLSCert: certFile, TLSKey: keyFile, TLSClientCA: notPEM}, "--tls-client-ca " + notPEM + ": no PEM certificate in it"},
	} {
		_, err := New(tc.cfg, Options{})
		require.Error(t, err)
		require.Contains(t, err.Error(), tc.want)
	}
}
