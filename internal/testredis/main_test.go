package testredis

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that every server's goroutines end with its test.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
