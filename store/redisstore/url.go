package redisstore

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// NewClient makes a go-redis client from a URL in one of these forms:
//
//	redis://[user:password@]host[:6379][/db][?option=value…]     one server
//	rediss://…                                                    the same over TLS
//	unix://[user:password@]/path/to/redis.sock[?db=N&…]           one server, unix socket
//	redis+sentinel://[user:password@]host[:26379][,host2[:26379]…]/master[/db][?option=value…]
//	rediss+sentinel://…                                           Sentinel, TLS to sentinels and master
//	redis+cluster://[user:password@]host[:6379][,host2[:6379]…][?option=value…]
//	rediss+cluster://…                                            Cluster over TLS
//
// The first three are go-redis's own (redis.ParseURL). go-redis has no
// scheme for Sentinel or Cluster (its ParseFailoverURL and ParseClusterURL
// read redis:// URLs that a plain server URL could not be told apart from),
// so the +sentinel and +cluster forms name the mode, list the seed hosts
// comma-separated, and are translated into those parsers' input. In the
// Sentinel form the user and password authenticate to the master and
// replicas; sentinel_username and sentinel_password options authenticate to
// the sentinels themselves. Options are go-redis's snake_case option names
// (dial_timeout=3s, pool_size=20, …; see redis.ParseURL); percent-encode
// reserved characters in passwords and names.
//
// ct, when not nil, adds a private CA and a client certificate to the TLS
// of a rediss URL; it is an error with a URL without TLS.
func NewClient(rawURL string, ct *ClientTLS) (redis.UniversalClient, error) {
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return nil, fmt.Errorf("redisstore: Redis URL %q has no scheme (want redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://)", redact(rawURL))
	}
	switch scheme {
	case "redis", "rediss", "unix":
		o, err := redis.ParseURL(rawURL)
		if err == nil {
			err = ct.apply(o.TLSConfig)
		}
		if err != nil {
			return nil, fmt.Errorf("redisstore: Redis URL %q: %w", redact(rawURL), err)
		}
		return redis.NewClient(o), nil
	case "redis+sentinel", "rediss+sentinel":
		o, err := parseSentinelURL(strings.TrimSuffix(scheme, "+sentinel"), rest)
		if err == nil {
			err = ct.apply(o.TLSConfig)
		}
		if err != nil {
			return nil, fmt.Errorf("redisstore: Redis Sentinel URL %q: %w", redact(rawURL), err)
		}
		return redis.NewFailoverClient(o), nil
	case "redis+cluster", "rediss+cluster":
		o, err := parseClusterURL(strings.TrimSuffix(scheme, "+cluster"), rest)
		if err == nil {
			err = ct.apply(o.TLSConfig)
		}
		if err != nil {
			return nil, fmt.Errorf("redisstore: Redis Cluster URL %q: %w", redact(rawURL), err)
		}
		return redis.NewClusterClient(o), nil
	}
	return nil, fmt.Errorf("redisstore: Redis URL %q: unknown scheme %q (want redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://)", redact(rawURL), scheme)
}

// ClientTLS is what a rediss URL cannot say: the CAs that sign Redis's
// certificate, when they are not the system's, and the client certificate
// a Redis with tls-auth-clients yes asks for.
type ClientTLS struct {
	// RootCAs verify the server's certificate; nil: the system's.
	RootCAs *x509.CertPool
	// ClientCertificate returns the certificate for each new connection
	// (so that a renewed one is used without a restart); nil: none.
	ClientCertificate func() *tls.Certificate
}

// ErrTLSWithoutTLS is a ClientTLS given with a URL that does not use TLS.
var ErrTLSWithoutTLS = errors.New("TLS settings (a CA or a client certificate) need a TLS URL: rediss://, rediss+sentinel:// or rediss+cluster://")

// apply adds ct to tc, the TLS configuration go-redis made from the URL
// (shared by the client's connections and nodes).
func (ct *ClientTLS) apply(tc *tls.Config) error {
	if ct == nil {
		return nil
	}
	if tc == nil {
		return ErrTLSWithoutTLS
	}
	if ct.RootCAs != nil {
		tc.RootCAs = ct.RootCAs
	}
	if get := ct.ClientCertificate; get != nil {
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return get(), nil }
	}
	return nil
}

// multiHost is the parsed "[userinfo@]host,host…/path?query" of a
// multi-host URL.
type multiHost struct {
	user  *url.Userinfo
	hosts []string
	path  string
	query url.Values
}

// splitMultiHost parses rest (the URL after "scheme://"); hosts without a
// port get defaultPort.
func splitMultiHost(rest, defaultPort string) (multiHost, error) {
	var m multiHost
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	if at := strings.LastIndexByte(authority, '@'); at >= 0 {
		// Let net/url decode the user info (percent-encoding included).
		u, err := url.Parse("x://" + authority[:at+1] + "h")
		if err != nil {
			return m, fmt.Errorf("bad user info: %w", err)
		}
		m.user = u.User
		authority = authority[at+1:]
	}
	for _, h := range strings.Split(authority, ",") {
		if h == "" {
			return m, fmt.Errorf("empty host in %q", authority)
		}
		host, port, err := net.SplitHostPort(h)
		if err != nil {
			// No port: the whole of h is the host (brackets for IPv6).
			host, port = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), defaultPort
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil || host == "" {
			return m, fmt.Errorf("bad host %q", h)
		}
		m.hosts = append(m.hosts, net.JoinHostPort(host, port))
	}
	u, err := url.Parse(tail)
	if err != nil {
		return m, err
	}
	m.path, m.query = u.Path, u.Query()
	return m, nil
}

// parseSentinelURL reads "[user:password@]host:port,…/master[/db][?…]".
func parseSentinelURL(base, rest string) (*redis.FailoverOptions, error) {
	m, err := splitMultiHost(rest, "26379")
	if err != nil {
		return nil, err
	}
	segs := strings.Split(strings.Trim(m.path, "/"), "/")
	if segs[0] == "" || len(segs) > 2 {
		return nil, fmt.Errorf("path %q must be /<master name>[/<db>]", m.path)
	}
	sentinelUser, sentinelPass := m.query.Get("sentinel_username"), m.query.Get("sentinel_password")
	m.query.Del("sentinel_username")
	m.query.Del("sentinel_password")
	m.query.Set("master_name", segs[0])
	for _, h := range m.hosts[1:] {
		m.query.Add("addr", h)
	}
	u := url.URL{Scheme: base, Host: m.hosts[0], RawQuery: m.query.Encode()}
	if len(segs) == 2 {
		u.Path = "/" + segs[1]
	}
	o, err := redis.ParseFailoverURL(u.String())
	if err != nil {
		return nil, err
	}
	o.SentinelUsername, o.SentinelPassword = sentinelUser, sentinelPass
	if m.user != nil {
		o.Username = m.user.Username()
		o.Password, _ = m.user.Password()
	}
	return o, nil
}

// parseClusterURL reads "[user:password@]host:port,…[?…]".
func parseClusterURL(base, rest string) (*redis.ClusterOptions, error) {
	m, err := splitMultiHost(rest, "6379")
	if err != nil {
		return nil, err
	}
	if strings.Trim(m.path, "/") != "" {
		return nil, fmt.Errorf("path %q: Redis Cluster has only database 0", m.path)
	}
	for _, h := range m.hosts[1:] {
		m.query.Add("addr", h)
	}
	u := url.URL{Scheme: base, User: m.user, Host: m.hosts[0], RawQuery: m.query.Encode()}
	return redis.ParseClusterURL(u.String())
}

// redact hides the passwords of a URL (user info, password options) in
// messages. It works on text that may not parse as a URL.
func redact(rawURL string) string {
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		scheme, rest = "", rawURL
	} else {
		scheme += "://"
	}
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	if at := strings.LastIndexByte(authority, '@'); at >= 0 {
		if user, _, hasPass := strings.Cut(authority[:at], ":"); hasPass {
			authority = user + ":xxxxx" + authority[at:]
		}
	}
	if q := strings.IndexByte(tail, '?'); q >= 0 {
		params := strings.Split(tail[q+1:], "&")
		for i, p := range params {
			if name, _, ok := strings.Cut(p, "="); ok && strings.HasSuffix(name, "password") {
				params[i] = name + "=xxxxx"
			}
		}
		tail = tail[:q+1] + strings.Join(params, "&")
	}
	return scheme + authority + tail
}
