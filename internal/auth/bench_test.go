package auth

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
)

// BenchmarkLookup: the cost of checking a bearer token against n
// configured tokens (one SHA-256 and n constant-time compares).
func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{1, 4, 32} {
		b.Run(fmt.Sprintf("tokens=%d", n), func(b *testing.B) {
			s := &tokenSet{}
			for i := range n {
				require.NoError(b, s.add(fmt.Sprintf("token-%02d-0123456789abcdef0123456789", i), Identity{Role: RoleWorker}))
			}
			tok := fmt.Sprintf("token-%02d-0123456789abcdef0123456789", n-1)
			b.ResetTimer()
			for b.Loop() {
				if _, ok := s.lookup(tok); !ok {
					b.Fatal("not found")
				}
			}
		})
	}
}

// BenchmarkUnaryCall: a ReportSuccess round trip over loopback, without
// authentication and with a bearer token, to see what auth adds to a call.
func BenchmarkUnaryCall(b *testing.B) {
	for _, tc := range []struct {
		name string
		cfg  Config
		tok  string
	}{
		{"off", Config{}, ""},
		{"token", Config{WorkerTokens: []string{workerToken, workerToken2}, AdminTokens: []string{adminToken}}, workerToken},
	} {
		b.Run(tc.name, func(b *testing.B) {
			bd := setup(b, tc.cfg)
			conn := bd.dial(nil)
			client := retrydv1.NewRetryServiceClient(conn)
			ctx := context.Background()
			if tc.tok != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tc.tok)
			}
			b.ResetTimer()
			for b.Loop() {
				if _, err := client.ReportSuccess(ctx, &retrydv1.ReportSuccessRequest{}, grpc.WaitForReady(true)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
