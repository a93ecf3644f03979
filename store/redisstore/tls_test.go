package redisstore

import (
	"crypto/tls"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/internal/auth/authtest"
	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/store"
)

// TestClientCertificate: a Redis with tls-auth-clients yes admits the store
// that shows a certificate of its CA, asks for it on every new connection
// (so that a renewed one is used), and refuses a store without one or with
// one of another CA.
func TestClientCertificate(t *testing.T) {
	t.Parallel()
	ca := authtest.NewCA(t, "redis test CA")
	srv := testredis.Start(t, testredis.TLS(ca, true))
	var cur atomic.Pointer[tls.Certificate]
	var asked atomic.Int64
	good := ca.Issue(t, authtest.Leaf{CommonName: "retryd"}).TLS
	cur.Store(&good)
	ct := &ClientTLS{RootCAs: ca.Pool(), ClientCertificate: func() *tls.Certificate {
		asked.Add(1)
		return cur.Load()
	}}

	s, err := Open(t.Context(), srv.TLSURL(), Options{TLS: ct})
	require.NoError(t, err)
	defer s.Close()
	require.NoError(t, s.Ping(t.Context()))
	require.Positive(t, asked.Load())
	_, err = s.RecordSuccess(t.Context(), store.Success{JobID: "j", Phase: "p", Now: time.Now()})
	require.NoError(t, err, "the store works over the client-authenticated connection")

	_, err = Open(t.Context(), srv.TLSURL()+"?max_retries=-1", Options{TLS: &ClientTLS{RootCAs: ca.Pool()}})
	require.ErrorIs(t, err, store.ErrUnavailable, "no client certificate")

	stranger := authtest.NewCA(t, "another CA").Issue(t, authtest.Leaf{CommonName: "retryd"}).TLS
	_, err = Open(t.Context(), srv.TLSURL()+"?max_retries=-1", Options{TLS: &ClientTLS{RootCAs: ca.Pool(),
		ClientCertificate: func() *tls.Certificate { return &stranger }}})
	require.ErrorIs(t, err, store.ErrUnavailable, "a certificate of another CA")
}

// TestClientTLSNeedsATLSURL: CA and certificate settings with a plain URL
// are a configuration error, not a silent plain-text connection.
func TestClientTLSNeedsATLSURL(t *testing.T) {
	for _, url := range []string{"redis://r:6379", "unix:///run/redis.sock", "redis+sentinel://s1,s2/m", "redis+cluster://n1,n2"} {
		_, err := NewClient(url, &ClientTLS{})
		require.True(t, errors.Is(err, ErrTLSWithoutTLS), "%s: %v", url, err)
	}
	for _, url := range []string{"rediss://r:6380", "rediss+sentinel://s1,s2/m", "rediss+cluster://n1,n2"} {
		c, err := NewClient(url, &ClientTLS{RootCAs: authtest.NewCA(t, "ca").Pool()})
		require.NoError(t, err, url)
		require.NoError(t, c.Close())
	}
}
