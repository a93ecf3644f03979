package scheduler

import (
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func newTestPolicy(t testing.TB, mutate func(*PolicyConfig)) *Policy {
	t.Helper()
	cfg := DefaultPolicyConfig()
	cfg.Jitter = 0
	if mutate != nil {
		mutate(&cfg)
	}
	p, err := NewPolicy(cfg, nil)
	require.NoError(t, err)
	return p
}

func TestDefaultTypeSetsAreTheSpecifications(t *testing.T) {
	t.Parallel()
	// Copied from seed-retry-spec.md; a change here is a change of contract.
	require.ElementsMatch(t, []string{
		"ConnectionError", "Timeout", "ReadTimeout", "HTTPError", "APIError",
		"RateLimitError", "ServiceUnavailable",
	}, DefaultRetryableTypes())
	require.ElementsMatch(t, []string{
		"ValidationError", "FileNotFoundError", "InvalidFileFormat",
		"AuthenticationError", "PermissionDenied",
	}, DefaultNonRetryableTypes())

	// Fresh slices: a caller cannot change the defaults.
	DefaultRetryableTypes()[0] = "Changed"
	require.Equal(t, "ConnectionError", DefaultRetryableTypes()[0])
}

func TestClassify(t *testing.T) {
	t.Parallel()
	p := newTestPolicy(t, func(c *PolicyConfig) {
		c.RetryableTypes = []string{"DeadlockDetected", "myapp.errors.Flaky"}
		c.NonRetryableTypes = []string{"QuotaExceeded", "HTTPError.Permanent", "APIError"}
	})

	tests := []struct {
		name       string
		errorType  string
		status     uint32
		retryable  bool
		rule       Rule
		wantReason string
	}{
		// The ordering edges.
		{"HTTPError with 404 gives up (status beats a retryable name)", "HTTPError", 404, false, RuleClientError,
			"HTTP status 404 is a client error (4xx other than 429)"},
		{"HTTPError with 503 retries", "HTTPError", 503, true, RuleRetryableType,
			"HTTPError is a retryable error type"},
		{"HTTPError with no status retries", "HTTPError", 0, true, RuleRetryableType,
			"HTTPError is a retryable error type"},
		{"ValidationError with 503 gives up (a non-retryable name beats 5xx)", "ValidationError", 503, false, RuleNonRetryableType,
			"ValidationError is a non-retryable error type"},
		{"429 with RateLimitError retries", "RateLimitError", 429, true, RuleRetryableType,
			"RateLimitError is a retryable error type"},
		{"429 with an unknown type retries", "SomethingOdd", 429, true, RuleUnknown,
			"SomethingOdd is not a known error type and HTTP status 429 (rate limited) is not a client error, so it is retried (unknown errors are retried, conservatively)"},
		{"unknown type retries", "KeyError", 0, true, RuleUnknown,
			"KeyError is not a known error type, so it is retried (unknown errors are retried, conservatively)"},
		{"qualified Python name matches its last component", "requests.exceptions.ConnectionError", 0, true, RuleRetryableType,
			"requests.exceptions.ConnectionError (as ConnectionError) is a retryable error type"},
		{"LeaseExpired retries", LeaseExpiredType, 0, true, RuleRetryableType,
			"LeaseExpired is a retryable error type (the worker did not report before its lease expired)"},

		// Each rule and its boundaries.
		{"every default non-retryable name", "FileNotFoundError", 0, false, RuleNonRetryableType, ""},
		{"InvalidFileFormat", "InvalidFileFormat", 0, false, RuleNonRetryableType, ""},
		{"AuthenticationError with 401", "AuthenticationError", 401, false, RuleNonRetryableType, ""},
		{"PermissionDenied with 500", "PermissionDenied", 500, false, RuleNonRetryableType, ""},
		{"400 is a client error", "", 400, false, RuleClientError, "HTTP status 400 is a client error (4xx other than 429)"},
		{"499 is a client error", "Timeout", 499, false, RuleClientError, ""},
		{"428 is a client error", "", 428, false, RuleClientError, ""},
		{"430 is a client error", "", 430, false, RuleClientError, ""},
		{"399 is not a client error", "", 399, true, RuleUnknown,
			"no error type was given and HTTP status 399 is neither 4xx nor 5xx, so it is retried (unknown errors are retried, conservatively)"},
		{"500 is a server error", "", 500, true, RuleServerError, "HTTP status 500 is a server error (500 or above)"},
		{"503 with an unknown type is a server error", "Boom", 503, true, RuleServerError, "HTTP status 503 is a server error (500 or above)"},
		{"599 is a server error", "", 599, true, RuleServerError, ""},
		{"nothing at all retries", "", 0, true, RuleUnknown,
			"no error type was given, so it is retried (unknown errors are retried, conservatively)"},
		{"Timeout", "Timeout", 0, true, RuleRetryableType, ""},
		{"ReadTimeout", "ReadTimeout", 0, true, RuleRetryableType, ""},
		{"ServiceUnavailable", "ServiceUnavailable", 0, true, RuleRetryableType, ""},
		{"names are case-sensitive", "connectionerror", 0, true, RuleUnknown, ""},
		{"a name is not matched by a prefix", "ConnectionErrorX", 0, true, RuleUnknown, ""},
		{"a qualified non-retryable name gives up", "pydantic.ValidationError", 0, false, RuleNonRetryableType,
			"pydantic.ValidationError (as ValidationError) is a non-retryable error type"},
		{"a qualified name only matches its last component", "ConnectionError.Details", 0, true, RuleUnknown, ""},
		{"Go pointer type", "*net.OpError", 0, true, RuleUnknown, ""},
		{"Go pointer type with a known name", "*myerrors.ValidationError", 0, false, RuleNonRetryableType, ""},
		{"Go pointer type without package", "*Timeout", 0, true, RuleRetryableType, "*Timeout (as Timeout) is a retryable error type"},
		{"Ruby qualified name", "Net::ReadTimeout", 0, true, RuleRetryableType, ""},
		{"PHP qualified name", `GuzzleHttp\Exception\ConnectionError`, 0, true, RuleRetryableType, ""},
		{"Java nested class", "com.acme.Errors$PermissionDenied", 0, false, RuleNonRetryableType, ""},
		{"a trailing separator matches nothing", "ConnectionError.", 0, true, RuleUnknown, ""},

		// Configured names.
		{"extra retryable name", "DeadlockDetected", 0, true, RuleRetryableType, ""},
		{"extra retryable name, qualified", "psycopg.DeadlockDetected", 0, true, RuleRetryableType, ""},
		{"a configured qualified name matches whole", "myapp.errors.Flaky", 0, true, RuleRetryableType,
			"myapp.errors.Flaky is a retryable error type"},
		{"a configured qualified name does not match its last component alone", "Flaky", 0, true, RuleUnknown, ""},
		{"extra non-retryable name", "QuotaExceeded", 503, false, RuleNonRetryableType, ""},
		{"a default retryable name made non-retryable", "APIError", 0, false, RuleNonRetryableType, "APIError is a non-retryable error type"},
		{"a configured qualified non-retryable name", "HTTPError.Permanent", 0, false, RuleNonRetryableType, ""},

		// Worker-supplied names are data in the reason.
		{"a name with spaces is quoted", "Bad Thing", 0, true, RuleUnknown,
			`"Bad Thing" is not a known error type, so it is retried (unknown errors are retried, conservatively)`},
		{"a name with a newline is quoted", "Bad\nThing", 0, true, RuleUnknown,
			`"Bad\nThing" is not a known error type, so it is retried (unknown errors are retried, conservatively)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := p.Classify(tt.errorType, tt.status)
			require.Equal(t, tt.retryable, c.Retryable, "reason: %s", c.Reason)
			require.Equal(t, tt.rule, c.Rule, "reason: %s", c.Reason)
			if tt.wantReason != "" {
				require.Equal(t, tt.wantReason, c.Reason)
			}
			require.NotEmpty(t, c.Reason)
		})
	}
}

func TestClassifyDefaultPolicyMatchesSpec(t *testing.T) {
	t.Parallel()
	// The specification's is_retryable_error, transcribed, checked against
	// Classify with the default sets over a grid of names and statuses.
	spec := func(errorType string, status uint32) bool {
		if slices.Contains(DefaultNonRetryableTypes(), errorType) {
			return false
		}
		if status != 0 && status >= 400 && status < 500 && status != 429 {
			return false
		}
		return true // known retryable, 5xx, or unknown: all retry
	}
	p := newTestPolicy(t, nil)
	names := append(append([]string{"", "Unknown"}, DefaultRetryableTypes()...), DefaultNonRetryableTypes()...)
	for _, name := range names {
		for status := uint32(0); status < 700; status++ {
			require.Equal(t, spec(name, status), p.Classify(name, status).Retryable, "%q %d", name, status)
		}
	}
}

func TestBaseName(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"ConnectionError":                     "ConnectionError",
		"requests.exceptions.ConnectionError": "ConnectionError",
		"*net.OpError":                        "OpError",
		"*OpError":                            "OpError",
		"Net::ReadTimeout":                    "ReadTimeout",
		`App\Errors\Timeout`:                  "Timeout",
		"github.com/acme/pkg.Timeout":         "Timeout",
		"Outer$Inner":                         "Inner",
		"trailing.":                           "",
	} {
		require.Equal(t, want, baseName(in), in)
	}
}

func TestRuleString(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for r := RuleNonRetryableType; r <= RuleUnknown; r++ {
		s := r.String()
		require.NotEqual(t, "unspecified", s)
		require.False(t, seen[s], "duplicate rule name %q", s)
		seen[s] = true
	}
	require.Equal(t, "unspecified", Rule(0).String())
}

func TestDisplayNameBoundsLongNames(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", 500) // 2 bytes each: the cut must not split one
	got := displayName(long)
	require.LessOrEqual(t, len(got), maxDisplayName+len("…"))
	require.True(t, strings.HasSuffix(got, "…"))
	require.True(t, strings.HasPrefix(got, "éé"))
	require.NotContains(t, got, `\x`)
}
