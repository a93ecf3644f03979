// Package auth authenticates and authorises retryd's gRPC callers.
//
// Two roles: a worker may call retryd.v1.RetryService (report, dispatch,
// extend leases); an admin may call that and retryd.v1.AdminService
// (re-drive, cancel, inspect). A caller proves its role with a bearer token
// (metadata "authorization: Bearer <token>") or, when a client CA is
// configured, with a client certificate that CA signed. Several tokens per
// role may be valid at once, so that a token is rotated by adding the new
// one, moving the clients over and removing the old one; token files and
// the server's key pair are re-read when they change (DefaultReloadInterval).
//
// Which credential decides: an authorization header, when present and token
// authentication is configured; otherwise the client certificate. A wrong
// header is refused even when the certificate is good, so that a
// misconfigured client is noticed.
//
// Per service (RequiredRole):
//
//	grpc.health.v1.Health                  anyone (probes carry no credential)
//	retryd.v1.RetryService                 worker or admin
//	grpc.reflection.*.ServerReflection     worker or admin
//	retryd.v1.AdminService, anything else  admin
//
// Reflection needs a credential, but not an admin one: it reveals only the
// public contract (the proto files of this repository), never data, and
// grpcurl needs it for every call — a worker's token must let an operator
// debug the worker's own calls with grpcurl. Anonymous callers learn
// nothing beyond what health already tells.
//
// No credential or an unknown one gives UNAUTHENTICATED; a worker
// credential on an admin method gives PERMISSION_DENIED. Messages never
// contain a token, and tokens are kept only as SHA-256 digests, compared in
// constant time. With no credential configured at all, authentication is
// off — and Config.CheckListen then refuses any address beyond loopback
// unless AllowUnauthenticated is set (Redis's protected mode).
package auth

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	grpcauth "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"github.com/jonboulle/clockwork"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"

	"github.com/retryd/retryd/internal/reload"
	"github.com/retryd/retryd/internal/tlsfiles"
)

// Role is what a caller may do. A higher role includes the lower ones.
type Role uint8

// Roles.
const (
	// RoleNone: no credential needed (health) or none presented.
	RoleNone Role = iota
	// RoleWorker: RetryService and reflection.
	RoleWorker
	// RoleAdmin: everything.
	RoleAdmin
)

// String returns "worker", "admin" or "none".
func (r Role) String() string {
	switch r {
	case RoleWorker:
		return "worker"
	case RoleAdmin:
		return "admin"
	}
	return "none"
}

// Identity is an authenticated caller.
type Identity struct {
	Role Role
	// Name says which credential it was, never the secret itself:
	// "RETRYD_ADMIN_TOKENS item 2", "worker token file line 3",
	// "client certificate spiffe://cluster.local/ns/jobs/sa/worker".
	Name string
}

type identityKey struct{}

// IdentityFromContext returns the caller authenticated for this call; false
// when the method needs no credential or authentication is off.
func IdentityFromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// Service names with their own rules.
var (
	healthService = healthpb.Health_ServiceDesc.ServiceName
	retryService  = retrydv1.RetryService_ServiceDesc.ServiceName
	adminService  = retrydv1.AdminService_ServiceDesc.ServiceName
)

// RequiredRole is the role a full method name ("/pkg.Service/Method")
// needs. Unknown services need admin: a service registered later is closed
// to workers until it is listed here.
func RequiredRole(fullMethod string) Role {
	service, _, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	switch {
	case service == healthService:
		return RoleNone
	case service == retryService:
		return RoleWorker
	case strings.HasPrefix(service, "grpc.reflection.") && strings.HasSuffix(service, ".ServerReflection"):
		return RoleWorker
	case service == adminService:
		return RoleAdmin
	}
	return RoleAdmin
}

// Options are the Authenticator's collaborators.
type Options struct {
	// Logger receives reload messages. Defaults to slog.Default().
	Logger *slog.Logger
	// Clock times the reload checks. Defaults to the real clock.
	Clock clockwork.Clock
	// ReloadInterval is how often token files and the key pair are
	// checked for changes. Defaults to DefaultReloadInterval.
	ReloadInterval time.Duration
}

// DefaultReloadInterval is how often token files and the TLS key pair are
// checked for changes: a rotated token or certificate is in force at most
// this long after its file changed, without a restart.
const DefaultReloadInterval = reload.DefaultInterval

// Authenticator enforces a Config on a gRPC server.
type Authenticator struct {
	cfg Config
	// tokens is nil when token authentication is not configured.
	tokens *reload.Value[*tokenSet]
	// cert and tlsConfig are nil without TLS.
	cert      *reload.Value[*tls.Certificate]
	tlsConfig *tls.Config
	// clientCA is set with mTLS.
	clientCA    bool
	adminNames  []string
	workerNames []string
}

// New reads the token files, the key pair and the client CA named by cfg
// and returns an Authenticator. Errors name the setting at fault and never
// quote a token.
func New(cfg Config, opts Options) (*Authenticator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ro := reload.Options{Clock: opts.Clock, Interval: opts.ReloadInterval, Logger: opts.Logger}
	a := &Authenticator{cfg: cfg, adminNames: cfg.TLSAdminNames, workerNames: cfg.TLSWorkerNames}
	if cfg.tokensConfigured() {
		var paths []string
		var roles []Role
		for _, f := range []struct {
			path string
			role Role
		}{{cfg.WorkerTokenFile, RoleWorker}, {cfg.AdminTokenFile, RoleAdmin}} {
			if f.path != "" {
				paths, roles = append(paths, f.path), append(roles, f.role)
			}
		}
		build := func(contents [][]byte) (*tokenSet, error) { return cfg.buildTokens(paths, roles, contents) }
		r, err := reload.New("token files", paths, build, ro)
		if err != nil {
			return nil, err
		}
		a.tokens = r
	}
	if cfg.TLSCert != "" {
		r, err := tlsfiles.KeyPair("TLS certificate and key", "--tls-cert", cfg.TLSCert, "--tls-key", cfg.TLSKey, ro)
		if err != nil {
			return nil, fmt.Errorf("TLS key pair: %w", err)
		}
		a.cert = r
		if a.tlsConfig, err = a.serverTLS(); err != nil {
			return nil, err
		}
	}
	a.clientCA = cfg.TLSClientCA != ""
	return a, nil
}

// Enabled reports whether callers must authenticate.
func (a *Authenticator) Enabled() bool { return a.cfg.Enabled() }

// ServerOptions are the gRPC server options that enforce the Config: TLS
// credentials when a key pair is configured, and the authentication
// interceptors (go-grpc-middleware's auth, behind a selector that lets
// health through) when Enabled.
func (a *Authenticator) ServerOptions() []grpc.ServerOption {
	var opts []grpc.ServerOption
	if a.tlsConfig != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(a.tlsConfig)))
	}
	if a.Enabled() {
		needsAuth := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
			return RequiredRole(c.FullMethod()) != RoleNone
		})
		opts = append(opts,
			grpc.ChainUnaryInterceptor(selector.UnaryServerInterceptor(grpcauth.UnaryServerInterceptor(a.Authenticate), needsAuth)),
			grpc.ChainStreamInterceptor(selector.StreamServerInterceptor(grpcauth.StreamServerInterceptor(a.Authenticate), needsAuth)),
		)
	}
	return opts
}

// Authenticate is the auth.AuthFunc: it identifies the caller and checks
// its role against the method's (grpc.Method of ctx). The returned context
// carries the Identity.
func (a *Authenticator) Authenticate(ctx context.Context) (context.Context, error) {
	method, _ := grpc.Method(ctx)
	need := RequiredRole(method)
	if need == RoleNone {
		return ctx, nil
	}
	id, err := a.identify(ctx)
	if err != nil {
		return nil, err
	}
	if id.Role < need {
		return nil, status.Errorf(codes.PermissionDenied, "%s needs the %s role; the credential of this call has the %s role", method, need, id.Role)
	}
	return context.WithValue(ctx, identityKey{}, id), nil
}

const authHeader = "authorization"

func (a *Authenticator) identify(ctx context.Context) (Identity, error) {
	if a.tokens != nil {
		if vals := metadata.ValueFromIncomingContext(ctx, authHeader); len(vals) > 0 {
			if len(vals) > 1 {
				return Identity{}, status.Error(codes.Unauthenticated, `send one "authorization" header, not several`)
			}
			tok, err := grpcauth.AuthFromMD(ctx, "bearer")
			if err != nil {
				return Identity{}, status.Error(codes.Unauthenticated, `the "authorization" header must be "Bearer <token>"`)
			}
			id, ok := a.tokens.Get().lookup(tok)
			if !ok {
				return Identity{}, status.Error(codes.Unauthenticated, "the bearer token is not a valid retryd token")
			}
			return id, nil
		}
	}
	if a.clientCA {
		id, ok, err := a.certIdentity(ctx)
		if err != nil {
			return Identity{}, err
		}
		if ok {
			return id, nil
		}
	}
	return Identity{}, status.Error(codes.Unauthenticated, a.missingMessage())
}

func (a *Authenticator) missingMessage() string {
	switch {
	case a.tokens != nil && a.clientCA:
		return `no credential: send the header "authorization: Bearer <token>" or a client certificate`
	case a.clientCA:
		return "no credential: connect with a client certificate signed by retryd's client CA"
	}
	return `no credential: send the header "authorization: Bearer <token>"`
}

// CheckListen is the protected mode: without authentication, retryd
// listens on loopback addresses only, unless AllowUnauthenticated says that
// something else (a service mesh, a network policy) keeps strangers out.
// addr is the bound address (after net.Listen, so that host names and ":0"
// are resolved the way the kernel did).
func (c Config) CheckListen(addr net.Addr) error {
	if c.Enabled() || c.AllowUnauthenticated {
		return nil
	}
	tcp, ok := addr.(*net.TCPAddr)
	if !ok || tcp.IP.IsLoopback() {
		return nil
	}
	where := "every interface"
	if !tcp.IP.IsUnspecified() {
		where = tcp.IP.String()
	}
	return fmt.Errorf("refusing to serve on %s (%s) without authentication: anyone who can reach it could report, "+
		"dispatch, cancel and re-drive jobs. Configure credentials (--worker-token-file and --admin-token-file, "+
		"RETRYD_WORKER_TOKENS and RETRYD_ADMIN_TOKENS, or --tls-client-ca), or listen on 127.0.0.1, or — if "+
		"something in front of retryd already keeps strangers out (a network policy, a service mesh) — pass "+
		"--allow-unauthenticated (RETRYD_ALLOW_UNAUTHENTICATED=true)", addr, where)
}

// Warnings are start-up remarks about a working but risky setup, for the log.
func (c Config) Warnings(addr net.Addr) []string {
	var w []string
	tcp, _ := addr.(*net.TCPAddr)
	beyondLoopback := tcp != nil && !tcp.IP.IsLoopback()
	if c.tokensConfigured() && c.TLSCert == "" && beyondLoopback {
		w = append(w, "bearer tokens travel in clear text on a non-loopback address: set --tls-cert and --tls-key, or terminate TLS in front of retryd")
	}
	if c.Enabled() && c.AdminTokenFile == "" && len(c.AdminTokens) == 0 && len(c.TLSAdminNames) == 0 {
		w = append(w, "no admin credential is configured: AdminService cannot be called")
	}
	if !c.Enabled() && c.AllowUnauthenticated && beyondLoopback {
		w = append(w, "serving without authentication beyond loopback (--allow-unauthenticated)")
	}
	return w
}
