package app

import (
	"log/slog"

	"github.com/retryd/retryd/internal/config"
	"github.com/retryd/retryd/internal/reload"
	"github.com/retryd/retryd/internal/tlsfiles"
	"github.com/retryd/retryd/store/redisstore"
)

// redisTLS reads the Redis TLS files of cfg: nil when none is set (the
// URL's TLS, if any, with the system's CAs). The client certificate is
// re-read when it changes, like the listener's; the CA is read once.
func redisTLS(cfg config.Config, log *slog.Logger) (*redisstore.ClientTLS, error) {
	if cfg.RedisTLSCA == "" && cfg.RedisTLSCert == "" {
		return nil, nil
	}
	ct := &redisstore.ClientTLS{}
	if cfg.RedisTLSCA != "" {
		pool, err := tlsfiles.CertPool("--redis-tls-ca", cfg.RedisTLSCA)
		if err != nil {
			return nil, err
		}
		ct.RootCAs = pool
	}
	if cfg.RedisTLSCert != "" {
		pair, err := tlsfiles.KeyPair("Redis client certificate and key",
			"--redis-tls-cert", cfg.RedisTLSCert, "--redis-tls-key", cfg.RedisTLSKey, reload.Options{Logger: log})
		if err != nil {
			return nil, err
		}
		ct.ClientCertificate = pair.Get
	}
	return ct, nil
}
