package auth

import (
	"net"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
)

func TestRequiredRole(t *testing.T) {
	t.Parallel()
	for method, want := range map[string]Role{
		"/grpc.health.v1.Health/Check":                                   RoleNone,
		"/grpc.health.v1.Health/Watch":                                   RoleNone,
		"/retryd.v1.RetryService/ReportFailure":                          RoleWorker,
		"/retryd.v1.RetryService/Dispatch":                               RoleWorker,
		"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":      RoleWorker,
		"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": RoleWorker,
		"/retryd.v1.AdminService/RetryJob":                               RoleAdmin,
		"/retryd.v2.SomethingNew/Method":                                 RoleAdmin,
		"/grpc.health.v1.HealthX/Check":                                  RoleAdmin,
		"":                                                               RoleAdmin,
	} {
		require.Equal(t, want, RequiredRole(method), method)
	}
}

// outcome is what a call must give: the code, and for OK calls the
// identity the handler saw.
type outcome struct {
	code codes.Code
	id   string
}

var (
	ok         = func(id string) outcome { return outcome{codes.OK, id} }
	unauth     = outcome{code: codes.Unauthenticated}
	denied     = outcome{code: codes.PermissionDenied}
	public     = outcome{codes.OK, ""}
	allMethods = []string{"RetryService/ReportSuccess", "RetryService/Dispatch", "AdminService/GetJob", "Health/Check", "ServerReflection"}
)

// TestTokens: which calls each kind of header gets through, over every kind
// of RPC (unary, server-streaming, bidi-streaming reflection, health).
func TestTokens(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{WorkerTokens: []string{workerToken, workerToken2}, AdminTokens: []string{adminToken}})
	conn := b.dial(nil)
	const w1, w2, adm = "worker|RETRYD_WORKER_TOKENS item 1", "worker|RETRYD_WORKER_TOKENS item 2", "admin|RETRYD_ADMIN_TOKENS item 1"
	cases := []struct {
		name   string
		header []string
		want   map[string]outcome
	}{
		{"no credential", nil, map[string]outcome{
			"RetryService/ReportSuccess": unauth, "RetryService/Dispatch": unauth, "AdminService/GetJob": unauth,
			"Health/Check": public, "ServerReflection": unauth,
		}},
		{"worker token", []string{"Bearer " + workerToken}, map[string]outcome{
			"RetryService/ReportSuccess": ok(w1), "RetryService/Dispatch": ok(w1), "AdminService/GetJob": denied,
			"Health/Check": public, "ServerReflection": public,
		}},
		{"second worker token (rotation)", []string{"Bearer " + workerToken2}, map[string]outcome{
			"RetryService/ReportSuccess": ok(w2), "RetryService/Dispatch": ok(w2), "AdminService/GetJob": denied,
			"Health/Check": public, "ServerReflection": public,
		}},
		{"admin token", []string{"Bearer " + adminToken}, map[string]outcome{
			"RetryService/ReportSuccess": ok(adm), "RetryService/Dispatch": ok(adm), "AdminService/GetJob": ok(adm),
			"Health/Check": public, "ServerReflection": public,
		}},
		{"scheme is case-insensitive", []string{"bearer " + adminToken}, map[string]outcome{
			"AdminService/GetJob": ok(adm),
		}},
		{"unknown token", []string{"Bearer " + otherToken}, map[string]outcome{
			"RetryService/ReportSuccess": unauth, "RetryService/Dispatch": unauth, "AdminService/GetJob": unauth,
			"Health/Check": public, "ServerReflection": unauth,
		}},
		{"token prefix", []string{"Bearer " + adminToken[:len(adminToken)-1]}, map[string]outcome{"AdminService/GetJob": unauth}},
		{"token with a suffix", []string{"Bearer " + adminToken + "x"}, map[string]outcome{"AdminService/GetJob": unauth}},
		{"other scheme", []string{"Basic " + adminToken}, map[string]outcome{"AdminService/GetJob": unauth}},
		{"no scheme", []string{adminToken}, map[string]outcome{"AdminService/GetJob": unauth}},
		{"empty token", []string{"Bearer "}, map[string]outcome{"RetryService/ReportSuccess": unauth}},
		{"two headers", []string{"Bearer " + workerToken, "Bearer " + adminToken}, map[string]outcome{
			"RetryService/ReportSuccess": unauth, "AdminService/GetJob": unauth,
		}},
	}
	for _, tc := range cases {
		for _, method := range allMethods {
			want, listed := tc.want[method]
			if !listed {
				continue
			}
			id, code, msg := b.call(conn, method, tc.header...)
			require.Equal(t, want.code, code, "%s: %s: %s", tc.name, method, msg)
			if code == codes.OK {
				require.Equal(t, want.id, id, "%s: %s", tc.name, method)
			}
			for _, tok := range []string{workerToken, workerToken2, adminToken, otherToken} {
				require.NotContains(t, msg, tok, "an error message quotes a token")
			}
		}
	}
}

func TestErrorMessagesSayWhatToDo(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{WorkerTokens: []string{workerToken}, AdminTokens: []string{adminToken}})
	conn := b.dial(nil)
	for _, tc := range []struct {
		method string
		header []string
		code   codes.Code
		msg    string
	}{
		{"RetryService/ReportSuccess", nil, codes.Unauthenticated, `no credential: send the header "authorization: Bearer <token>"`},
		{"RetryService/ReportSuccess", []string{"Token x"}, codes.Unauthenticated, `the "authorization" header must be "Bearer <token>"`},
		{"RetryService/ReportSuccess", []string{"Bearer " + otherToken}, codes.Unauthenticated, "the bearer token is not a valid retryd token"},
		{"AdminService/GetJob", []string{"Bearer " + workerToken}, codes.PermissionDenied,
			"/retryd.v1.AdminService/GetJob needs the admin role; the credential of this call has the worker role"},
	} {
		_, code, msg := b.call(conn, tc.method, tc.header...)
		require.Equal(t, tc.code, code, msg)
		require.Equal(t, tc.msg, msg)
	}
}

// TestOff: the zero Config adds no interceptor: every call passes and
// carries no identity.
func TestOff(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	require.False(t, b.auth.Enabled())
	require.Empty(t, b.auth.ServerOptions())
	conn := b.dial(nil)
	for _, method := range allMethods {
		id, code, msg := b.call(conn, method, "Bearer "+otherToken)
		require.Equal(t, codes.OK, code, "%s: %s", method, msg)
		if strings.HasPrefix(method, "RetryService") || strings.HasPrefix(method, "AdminService") {
			require.Equal(t, "none", id)
		}
	}
}

// TestTokenFiles: tokens from files and from the environment together; a
// rotation through the files takes effect at the next check, without a
// restart; a broken file keeps the previous tokens.
func TestTokenFiles(t *testing.T) {
	t.Parallel()
	workerFile, adminFile := tempFile(t, "worker.tokens"), tempFile(t, "admin.tokens")
	writeTokens(t, workerFile, "# the worker tokens", "", "  "+workerToken+"  ")
	writeTokens(t, adminFile, adminToken)
	b := setup(t, Config{WorkerTokenFile: workerFile, AdminTokenFile: adminFile, WorkerTokens: []string{otherToken}})
	conn := b.dial(nil)
	wf := "worker|--worker-token-file " + workerFile + " line "
	af := "admin|--admin-token-file " + adminFile + " line "
	check := func(token, method string, want outcome) {
		t.Helper()
		id, code, msg := b.call(conn, method, "Bearer "+token)
		require.Equal(t, want.code, code, msg)
		if code == codes.OK {
			require.Equal(t, want.id, id)
		}
	}
	check(workerToken, "RetryService/ReportSuccess", ok(wf+"3"))
	check(otherToken, "RetryService/ReportSuccess", ok("worker|RETRYD_WORKER_TOKENS item 1"))
	check(adminToken, "AdminService/GetJob", ok(af+"1"))

	// Rotation, step 1: the new worker token is added next to the old one.
	writeTokens(t, workerFile, workerToken, workerToken2)
	check(workerToken2, "RetryService/ReportSuccess", unauth) // not checked yet
	b.clock.Advance(DefaultReloadInterval)
	check(workerToken2, "RetryService/ReportSuccess", ok(wf+"2"))
	check(workerToken, "RetryService/ReportSuccess", ok(wf+"1"))
	require.Contains(t, b.logs.String(), "reloaded token files")

	// Step 2: the old one is removed.
	writeTokens(t, workerFile, workerToken2)
	b.clock.Advance(DefaultReloadInterval)
	check(workerToken, "RetryService/ReportSuccess", unauth)
	check(workerToken2, "RetryService/ReportSuccess", ok(wf+"1"))

	// A broken change (a token too short, a worker token that is also an
	// admin's, an empty file, a missing file) keeps what was in force.
	for _, broken := range []func(){
		func() { writeTokens(t, workerFile, workerToken2, "short") },
		func() { writeTokens(t, workerFile, adminToken) },
		func() { writeTokens(t, workerFile, "# nothing") },
		func() { require.NoError(t, os.Remove(workerFile)) },
	} {
		broken()
		b.clock.Advance(DefaultReloadInterval)
		check(workerToken2, "RetryService/ReportSuccess", ok(wf+"1"))
		check(adminToken, "AdminService/GetJob", ok(af+"1"))
	}
	logs := b.logs.String()
	require.Contains(t, logs, "changed token files rejected; the previous ones stay in force")
	require.Contains(t, logs, "line 2: a token must be 16 to 4096 characters long (this one has 5)")
	require.Contains(t, logs, "--admin-token-file "+adminFile+" line 1 is also given as --worker-token-file "+workerFile+" line 1")
	require.Contains(t, logs, "holds no token")
	require.Contains(t, logs, "cannot re-read token files")
	for _, tok := range []string{workerToken, workerToken2, adminToken, otherToken} {
		require.NotContains(t, logs, tok, "a log line quotes a token")
	}

	// Fixed again: picked up.
	writeTokens(t, workerFile, workerToken)
	b.clock.Advance(DefaultReloadInterval)
	check(workerToken, "RetryService/ReportSuccess", ok(wf+"1"))
	check(workerToken2, "RetryService/ReportSuccess", unauth)
}

func TestNewErrors(t *testing.T) {
	t.Parallel()
	good := tempFile(t, "good")
	writeTokens(t, good, workerToken)
	empty := tempFile(t, "empty")
	writeTokens(t, empty, "# none yet")
	bad := tempFile(t, "bad")
	writeTokens(t, bad, workerToken, "has space inside it 0123456789")
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{WorkerTokenFile: tempFile(t, "missing")}, "no such file or directory"},
		{Config{WorkerTokenFile: empty}, "--worker-token-file " + empty + ": holds no token"},
		{Config{AdminTokenFile: bad}, "--admin-token-file " + bad + ": line 2: character 4 of the token is not allowed"},
		{Config{WorkerTokenFile: good, AdminTokens: []string{workerToken}}, "--worker-token-file " + good + " line 1 is also given as RETRYD_ADMIN_TOKENS item 1"},
		{Config{WorkerTokens: []string{"short"}}, "RETRYD_WORKER_TOKENS item 1: a token must be 16 to 4096 characters long (this one has 5); make one with: head -c 32 /dev/urandom | base64"},
		{Config{TLSCert: good, TLSKey: good}, "--tls-cert " + good + " / --tls-key " + good},
	} {
		_, err := New(tc.cfg, Options{})
		require.Error(t, err)
		require.Contains(t, err.Error(), tc.want)
		require.NotContains(t, err.Error(), workerToken)
	}
}

func TestCheckToken(t *testing.T) {
	t.Parallel()
	require.NoError(t, CheckToken("0123456789abcdef"))
	require.NoError(t, CheckToken("q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq8I=")) // base64 of 32 bytes
	require.NoError(t, CheckToken(strings.Repeat("x", MaxTokenLen)))
	for _, bad := range []string{"", "0123456789abcde", strings.Repeat("x", MaxTokenLen+1), "0123456789 abcdef", "0123456789,abcdef", "0123456789abcdef\x00", "0123456789abcdefé"} {
		err := CheckToken(bad)
		require.Error(t, err, "%q", bad)
		if len(bad) > 3 {
			require.NotContains(t, err.Error(), bad)
		}
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, Config{}.Validate())
	require.NoError(t, Config{TLSCert: "c", TLSKey: "k", TLSClientCA: "ca", TLSAdminNames: []string{"ops", "spiffe://x/ns/ops/*"}}.Validate())
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{TLSCert: "c"}, "--tls-cert and --tls-key go together"},
		{Config{TLSKey: "k"}, "--tls-cert and --tls-key go together"},
		{Config{TLSClientCA: "ca"}, "--tls-client-ca needs --tls-cert and --tls-key"},
		{Config{TLSAdminNames: []string{"ops"}}, "--tls-admin-names and --tls-worker-names need --tls-client-ca"},
		{Config{TLSCert: "c", TLSKey: "k", TLSClientCA: "ca", TLSWorkerNames: []string{"a*b"}}, `--tls-worker-names item 1: "a*b": '*' may only end a name`},
		{Config{TLSCert: "c", TLSKey: "k", TLSClientCA: "ca", TLSAdminNames: []string{"ok", "*"}}, "--tls-admin-names item 2: a name must not be empty or match everything"},
		{Config{AdminTokens: []string{adminToken, adminToken, "x"}}, "RETRYD_ADMIN_TOKENS item 3: a token must be"},
	} {
		err := tc.cfg.Validate()
		require.Error(t, err)
		require.Contains(t, err.Error(), tc.want)
	}
}

// TestCheckListen is the protected mode.
func TestCheckListen(t *testing.T) {
	t.Parallel()
	addr := func(s string) net.Addr {
		a, err := net.ResolveTCPAddr("tcp", s)
		require.NoError(t, err)
		return a
	}
	off := Config{}
	for _, loop := range []string{"127.0.0.1:50051", "127.0.0.2:1", "[::1]:50051"} {
		require.NoError(t, off.CheckListen(addr(loop)), loop)
	}
	for _, s := range []string{"0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051", "[2001:db8::1]:50051"} {
		err := off.CheckListen(addr(s))
		require.Error(t, err, s)
		require.Contains(t, err.Error(), "without authentication")
		require.Contains(t, err.Error(), "--allow-unauthenticated (RETRYD_ALLOW_UNAUTHENTICATED=true)")
		require.Contains(t, err.Error(), "--worker-token-file and --admin-token-file")
		require.NoError(t, Config{AllowUnauthenticated: true}.CheckListen(addr(s)))
		require.NoError(t, Config{AdminTokens: []string{adminToken}}.CheckListen(addr(s)))
		require.NoError(t, Config{TLSCert: "c", TLSKey: "k", TLSClientCA: "ca"}.CheckListen(addr(s)))
		// TLS alone authenticates no one.
		require.Error(t, Config{TLSCert: "c", TLSKey: "k"}.CheckListen(addr(s)))
	}
	require.Contains(t, off.CheckListen(addr("0.0.0.0:1")).Error(), "refusing to serve on 0.0.0.0:1 (every interface)")
	require.Contains(t, off.CheckListen(addr("10.1.2.3:1")).Error(), "refusing to serve on 10.1.2.3:1 (10.1.2.3)")
}

func TestWarnings(t *testing.T) {
	t.Parallel()
	any4 := &net.TCPAddr{IP: net.IPv4zero, Port: 1}
	loop := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	require.Empty(t, Config{}.Warnings(loop))
	require.Empty(t, Config{WorkerTokens: []string{workerToken}, AdminTokens: []string{adminToken}}.Warnings(loop))
	w := Config{WorkerTokens: []string{workerToken}}.Warnings(any4)
	require.Len(t, w, 2)
	require.Contains(t, w[0], "bearer tokens travel in clear text")
	require.Contains(t, w[1], "no admin credential is configured")
	require.Equal(t, []string{"serving without authentication beyond loopback (--allow-unauthenticated)"},
		Config{AllowUnauthenticated: true}.Warnings(any4))
}

func TestLogValueHidesTokens(t *testing.T) {
	t.Parallel()
	c := Config{WorkerTokens: []string{workerToken, workerToken2}, AdminTokens: []string{adminToken}, AdminTokenFile: "/run/secrets/admin"}
	s := c.LogValue().String()
	require.Contains(t, s, "worker_tokens=2")
	require.Contains(t, s, "admin_token_file=/run/secrets/admin")
	for _, tok := range []string{workerToken, workerToken2, adminToken} {
		require.NotContains(t, s, tok)
	}
}

func TestLookupIsExact(t *testing.T) {
	t.Parallel()
	s := &tokenSet{}
	require.NoError(t, s.add(workerToken, Identity{Role: RoleWorker, Name: "w"}))
	require.NoError(t, s.add(workerToken, Identity{Role: RoleWorker, Name: "w again"}))
	require.NoError(t, s.add(adminToken, Identity{Role: RoleAdmin, Name: "a"}))
	require.Equal(t, 1, s.workers)
	require.Equal(t, 1, s.admins)
	id, found := s.lookup(workerToken)
	require.True(t, found)
	require.Equal(t, Identity{Role: RoleWorker, Name: "w"}, id)
	for _, miss := range []string{"", workerToken[:5], workerToken + " ", strings.ToUpper(workerToken)} {
		_, found := s.lookup(miss)
		require.False(t, found, "%q", miss)
	}
}
