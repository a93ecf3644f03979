package redisstore

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestNewClientSingleServer(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		url, network, addr string
		db                 int
		tls                bool
	}{
		{"redis://localhost", "tcp", "localhost:6379", 0, false},
		{"redis://:secret@10.0.0.1:6380/2?dial_timeout=3s", "tcp", "10.0.0.1:6380", 2, false},
		{"rediss://user:pw@redis.example:6390/1", "tcp", "redis.example:6390", 1, true},
		{"unix:///run/redis/redis.sock?db=3", "unix", "/run/redis/redis.sock", 3, false},
	} {
		client, err := NewClient(c.url, nil)
		require.NoError(t, err, c.url)
		rc, ok := client.(*redis.Client)
		require.True(t, ok, "%s gives a single-server client", c.url)
		o := rc.Options()
		require.Equal(t, c.network, o.Network, c.url)
		require.Equal(t, c.addr, o.Addr, c.url)
		require.Equal(t, c.db, o.DB, c.url)
		require.Equal(t, c.tls, o.TLSConfig != nil, c.url)
		require.NoError(t, client.Close())
	}
}

func TestParseSentinelURL(t *testing.T) {
	t.Parallel()
	o, err := parseSentinelURL("redis",
		"app:p%40ss@s1.example,s2.example:26380,[::1]:26381/mymaster/4?sentinel_password=sp&dial_timeout=2s&pool_size=7")
	require.NoError(t, err)
	require.Equal(t, "mymaster", o.MasterName)
	require.Equal(t, []string{"s1.example:26379", "s2.example:26380", "[::1]:26381"}, o.SentinelAddrs)
	require.Equal(t, 4, o.DB)
	require.Equal(t, "app", o.Username, "user info authenticates to the master")
	require.Equal(t, "p@ss", o.Password)
	require.Equal(t, "", o.SentinelUsername)
	require.Equal(t, "sp", o.SentinelPassword)
	require.Equal(t, 2*time.Second, o.DialTimeout)
	require.Equal(t, 7, o.PoolSize)
	require.Nil(t, o.TLSConfig)

	o, err = parseSentinelURL("rediss", "s1/m")
	require.NoError(t, err)
	require.NotNil(t, o.TLSConfig)
	require.Equal(t, 0, o.DB)
	require.Equal(t, []string{"s1:26379"}, o.SentinelAddrs)

	for _, bad := range []string{"s1", "s1/", "s1/m/0/x", "s1,/m", "s1:port/m", "s1/m?no_such_option=1"} {
		_, err := parseSentinelURL("redis", bad)
		require.Error(t, err, bad)
	}
}

func TestParseClusterURL(t *testing.T) {
	t.Parallel()
	o, err := parseClusterURL("redis", "u:pw@n1:7000,n2:7001,n3?read_only=true")
	require.NoError(t, err)
	require.Equal(t, []string{"n1:7000", "n2:7001", "n3:6379"}, o.Addrs)
	require.Equal(t, "u", o.Username)
	require.Equal(t, "pw", o.Password)
	require.True(t, o.ReadOnly)
	require.Nil(t, o.TLSConfig)

	o, err = parseClusterURL("rediss", "n1")
	require.NoError(t, err)
	require.NotNil(t, o.TLSConfig)

	_, err = parseClusterURL("redis", "n1/2")
	require.ErrorContains(t, err, "only database 0")
}

func TestNewClientModes(t *testing.T) {
	t.Parallel()
	c, err := NewClient("redis+cluster://n1:7000,n2:7001", nil)
	require.NoError(t, err)
	require.IsType(t, &redis.ClusterClient{}, c)
	require.NoError(t, c.Close())

	c, err = NewClient("rediss+sentinel://s1:26379/m", nil)
	require.NoError(t, err)
	require.IsType(t, &redis.Client{}, c)
	require.NoError(t, c.Close())

	for _, bad := range []string{"u:pw@localhost:6379", "http://:pw@x", "redis+sentinel://:pw@s1", "redis://:pw@h/x"} {
		_, err := NewClient(bad, nil)
		require.Error(t, err, bad)
		require.NotContains(t, err.Error(), ":pw@", "passwords never appear in messages")
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"redis://u:secret@h:1/0":                        "redis://u:xxxxx@h:1/0",
		"redis://:secret@h":                             "redis://:xxxxx@h",
		"redis://u@h":                                   "redis://u@h",
		"redis://h/0?x=a@b":                             "redis://h/0?x=a@b",
		"redis+sentinel://u:p@a,b/m/0":                  "redis+sentinel://u:xxxxx@a,b/m/0",
		"unix://u:p@/run/redis.sock":                    "unix://u:xxxxx@/run/redis.sock",
		"u:p@localhost:6379":                            "u:xxxxx@localhost:6379",
		"redis://u:p%40ss@h?password=x":                 "redis://u:xxxxx@h?password=xxxxx",
		"redis+sentinel://s/m?sentinel_password=x&db=1": "redis+sentinel://s/m?sentinel_password=xxxxx&db=1",
	} {
		require.Equal(t, want, redact(in), in)
	}
}
