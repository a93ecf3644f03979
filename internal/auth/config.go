package auth

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

// Config says which credentials retryd accepts and how it serves TLS. The
// zero Config turns authentication and TLS off. Field docs name the flag
// and environment variable that set them (internal/config).
type Config struct {
	// WorkerTokenFile (--worker-token-file, RETRYD_WORKER_TOKEN_FILE) holds
	// worker tokens, one per line; blank lines and lines starting with '#'
	// are skipped. Re-read when it changes.
	WorkerTokenFile string
	// AdminTokenFile (--admin-token-file, RETRYD_ADMIN_TOKEN_FILE): the same for admins.
	AdminTokenFile string
	// WorkerTokens (RETRYD_WORKER_TOKENS, comma-separated) are worker tokens
	// given directly. They add to the file's.
	WorkerTokens []string
	// AdminTokens (RETRYD_ADMIN_TOKENS): the same for admins.
	AdminTokens []string

	// TLSCert and TLSKey (--tls-cert, --tls-key) are the server's PEM
	// certificate (chain) and key; set both to serve TLS. Re-read when they change.
	TLSCert string
	TLSKey  string
	// TLSClientCA (--tls-client-ca) is a PEM bundle of CAs: a client
	// certificate one of them signed authenticates (mutual TLS). Needs TLSCert.
	TLSClientCA string
	// TLSAdminNames (--tls-admin-names) are the client certificate names
	// that get the admin role: a name matches the certificate's subject
	// common name or any of its DNS, URI or email SANs, exactly, or as a
	// prefix when it ends in '*' (spiffe://cluster.local/ns/ops/*).
	TLSAdminNames []string
	// TLSWorkerNames (--tls-worker-names) are the names that get the worker
	// role; empty means every certificate the client CA signed that is not
	// an admin's.
	TLSWorkerNames []string

	// AllowUnauthenticated (--allow-unauthenticated) lets retryd serve
	// beyond loopback without authentication (see CheckListen).
	AllowUnauthenticated bool
}

// Enabled reports whether any credential is configured, that is whether
// callers must authenticate.
func (c Config) Enabled() bool { return c.tokensConfigured() || c.TLSClientCA != "" }

func (c Config) tokensConfigured() bool {
	return c.WorkerTokenFile != "" || c.AdminTokenFile != "" || len(c.WorkerTokens) > 0 || len(c.AdminTokens) > 0
}

// Validate checks what can be checked without reading files: the tokens
// given directly, the name patterns, and the combinations. Errors name the
// flag or variable and never quote a token.
func (c Config) Validate() error {
	var errs []error
	if _, err := c.buildTokens(nil, nil, nil); err != nil {
		errs = append(errs, err)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together: set both to serve TLS, or neither"))
	}
	if c.TLSClientCA != "" && c.TLSCert == "" {
		errs = append(errs, errors.New("--tls-client-ca needs --tls-cert and --tls-key: client certificates are checked in the TLS handshake"))
	}
	if c.TLSClientCA == "" && (len(c.TLSAdminNames) > 0 || len(c.TLSWorkerNames) > 0) {
		errs = append(errs, errors.New("--tls-admin-names and --tls-worker-names need --tls-client-ca"))
	}
	for _, l := range []struct {
		flag  string
		names []string
	}{{"--tls-admin-names", c.TLSAdminNames}, {"--tls-worker-names", c.TLSWorkerNames}} {
		for i, n := range l.names {
			if err := CheckNamePattern(n); err != nil {
				errs = append(errs, fmt.Errorf("%s item %d: %w", l.flag, i+1, err))
			}
		}
	}
	return errors.Join(errs...)
}

// CheckNamePattern checks one --tls-admin-names or --tls-worker-names
// item: a certificate name, optionally ending in '*' for a prefix match.
func CheckNamePattern(p string) error {
	switch {
	case p == "" || p == "*":
		return errors.New("a name must not be empty or match everything")
	case strings.ContainsAny(p, " \t\r\n"):
		return fmt.Errorf("%q has white space", p)
	case strings.Contains(strings.TrimSuffix(p, "*"), "*"):
		return fmt.Errorf("%q: '*' may only end a name (a prefix match)", p)
	}
	return nil
}

// buildTokens builds the token set from the tokens given directly and the
// contents of the token files at paths (whose roles are roles).
func (c Config) buildTokens(paths []string, roles []Role, contents [][]byte) (*tokenSet, error) {
	s := &tokenSet{}
	for _, l := range []struct {
		env  string
		role Role
		toks []string
	}{{"RETRYD_WORKER_TOKENS", RoleWorker, c.WorkerTokens}, {"RETRYD_ADMIN_TOKENS", RoleAdmin, c.AdminTokens}} {
		for i, tok := range l.toks {
			name := fmt.Sprintf("%s item %d", l.env, i+1)
			if err := CheckToken(tok); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if err := s.add(tok, Identity{Role: l.role, Name: name}); err != nil {
				return nil, err
			}
		}
	}
	for i, data := range contents {
		flag := "--worker-token-file"
		if roles[i] == RoleAdmin {
			flag = "--admin-token-file"
		}
		toks, lines, err := parseTokenFile(data)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", flag, paths[i], err)
		}
		for j, tok := range toks {
			id := Identity{Role: roles[i], Name: fmt.Sprintf("%s %s line %d", flag, paths[i], lines[j])}
			if err := s.add(tok, id); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

// LogValue shows the configuration without a single token: how many are
// given directly, and the file names.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Bool("enabled", c.Enabled()),
		slog.String("worker_token_file", c.WorkerTokenFile),
		slog.String("admin_token_file", c.AdminTokenFile),
		slog.Int("worker_tokens", len(c.WorkerTokens)),
		slog.Int("admin_tokens", len(c.AdminTokens)),
		slog.String("tls_cert", c.TLSCert),
		slog.String("tls_client_ca", c.TLSClientCA),
		slog.Any("tls_admin_names", c.TLSAdminNames),
		slog.Any("tls_worker_names", c.TLSWorkerNames),
		slog.Bool("allow_unauthenticated", c.AllowUnauthenticated),
	)
}
