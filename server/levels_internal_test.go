package server

import (
	"testing"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
)

// TestLogLevels: a unary call's deadline is a warning (retryd was too
// slow for its caller), a stream's is the client ending it: info.
func TestLogLevels(t *testing.T) {
	for _, c := range []struct {
		code          codes.Code
		unary, stream logging.Level
	}{
		{codes.OK, logging.LevelDebug, logging.LevelDebug},
		{codes.Canceled, logging.LevelInfo, logging.LevelInfo},
		{codes.DeadlineExceeded, logging.LevelWarn, logging.LevelInfo},
		{codes.InvalidArgument, logging.LevelInfo, logging.LevelInfo},
		{codes.Unavailable, logging.LevelWarn, logging.LevelWarn},
		{codes.Internal, logging.LevelError, logging.LevelError},
	} {
		require.Equal(t, c.unary, unaryLevel(c.code), "unary %v", c.code)
		require.Equal(t, c.stream, streamLevel(c.code), "stream %v", c.code)
	}
}
