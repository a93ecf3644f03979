package scheduler

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// DefaultRetryableTypes returns the specification's RETRYABLE_ERRORS, exactly.
// A fresh slice each call, so that no caller can change the defaults.
//
// retryd adds one name of its own to the retryable set of every Policy:
// LeaseExpiredType, the error type it records when a worker never reports a
// dispatched task (DESIGN.md invariant 3 requires it to be retried).
func DefaultRetryableTypes() []string {
	return []string{
		// Network/API errors.
		"ConnectionError", "Timeout", "ReadTimeout", "HTTPError", "APIError",
		// Temporary service issues.
		"RateLimitError", "ServiceUnavailable",
	}
}

// DefaultNonRetryableTypes returns the specification's NON_RETRYABLE_ERRORS,
// exactly: client errors that no retry can fix.
func DefaultNonRetryableTypes() []string {
	return []string{
		"ValidationError", "FileNotFoundError", "InvalidFileFormat",
		"AuthenticationError", "PermissionDenied",
	}
}

// Rule names the classification rule that decided. The values are ordered
// as the rules are tried.
type Rule uint8

// The classification rules, in the order DESIGN.md fixes. RuleRetryableType
// and RuleServerError are the specification's third rule ("a retryable type
// name or status >= 500"); the type name is tried first, as in the
// specification's `or`, so that its reason names it.
const (
	// RuleNonRetryableType: the error type is a non-retryable name → give up,
	// whatever the HTTP status.
	RuleNonRetryableType Rule = iota + 1
	// RuleClientError: HTTP status 400–499 other than 429 → give up.
	RuleClientError
	// RuleRetryableType: the error type is a retryable name → retry.
	RuleRetryableType
	// RuleServerError: HTTP status 500 or above → retry.
	RuleServerError
	// RuleUnknown: nothing above matched → retry (the conservative default).
	RuleUnknown
)

// String returns the rule's short name, stable enough for log fields and
// metric labels.
func (r Rule) String() string {
	switch r {
	case RuleNonRetryableType:
		return "non-retryable-type"
	case RuleClientError:
		return "client-error"
	case RuleRetryableType:
		return "retryable-type"
	case RuleServerError:
		return "server-error"
	case RuleUnknown:
		return "unknown"
	}
	return "unspecified"
}

// Classification is what Classify decided about one error.
type Classification struct {
	// Retryable is the rule's verdict. Whether a retry is actually scheduled
	// also depends on the retry budget (see Policy.Decide).
	Retryable bool
	// Rule is the rule that decided.
	Rule Rule
	// Reason is one sentence naming the rule and the facts it matched, for
	// the operator (e.g. "HTTP status 404 is a client error (4xx other than
	// 429)"). It says nothing about the schedule; Decide adds that.
	Reason string
}

// classifyInput is what the rules look at.
type classifyInput struct {
	errorType  string
	httpStatus uint32
}

// classifyRule is one step of the ordered rule list: it either decides
// (ok true) or passes to the next rule.
type classifyRule func(p *Policy, in classifyInput) (c Classification, ok bool)

// classifyRules is the specification's is_retryable_error, one rule per line,
// in its order. The last rule always decides.
var classifyRules = []classifyRule{
	// 1. A non-retryable type name gives up, even with a 5xx status: the
	//    worker said what is wrong, and no retry fixes it.
	func(p *Policy, in classifyInput) (Classification, bool) {
		m, ok := matchType(p.nonRetryable, in.errorType)
		if !ok {
			return Classification{}, false
		}
		return Classification{Retryable: false, Rule: RuleNonRetryableType, Reason: typeName(in.errorType, m) + " is a non-retryable error type"}, true
	},
	// 2. HTTP 4xx other than 429 gives up: the request itself is wrong.
	//    429 (rate limited) falls through and is retried.
	func(_ *Policy, in classifyInput) (Classification, bool) {
		if in.httpStatus < 400 || in.httpStatus > 499 || in.httpStatus == 429 {
			return Classification{}, false
		}
		return Classification{Retryable: false, Rule: RuleClientError, Reason: fmt.Sprintf("HTTP status %d is a client error (4xx other than 429)", in.httpStatus)}, true
	},
	// 3a. A retryable type name retries (HTTPError with no status, too).
	func(p *Policy, in classifyInput) (Classification, bool) {
		m, ok := matchType(p.retryable, in.errorType)
		if !ok {
			return Classification{}, false
		}
		reason := typeName(in.errorType, m) + " is a retryable error type"
		if m == LeaseExpiredType {
			reason += " (the worker did not report before its lease expired)"
		}
		return Classification{Retryable: true, Rule: RuleRetryableType, Reason: reason}, true
	},
	// 3b. HTTP 5xx retries: the server failed, and may not next time.
	func(_ *Policy, in classifyInput) (Classification, bool) {
		if in.httpStatus < 500 {
			return Classification{}, false
		}
		return Classification{Retryable: true, Rule: RuleServerError, Reason: fmt.Sprintf("HTTP status %d is a server error (500 or above)", in.httpStatus)}, true
	},
	// 4. Anything else retries: an unknown error is assumed transient, as
	//    the specification chooses (conservative: never drop work silently).
	func(_ *Policy, in classifyInput) (Classification, bool) {
		var b strings.Builder
		if in.errorType == "" {
			b.WriteString("no error type was given")
		} else {
			b.WriteString(displayName(in.errorType) + " is not a known error type")
		}
		switch {
		case in.httpStatus == 429:
			b.WriteString(" and HTTP status 429 (rate limited) is not a client error")
		case in.httpStatus != 0:
			fmt.Fprintf(&b, " and HTTP status %d is neither 4xx nor 5xx", in.httpStatus)
		}
		b.WriteString(", so it is retried (unknown errors are retried, conservatively)")
		return Classification{Retryable: true, Rule: RuleUnknown, Reason: b.String()}, true
	},
}

// Classify applies the classification rules in the specification's order:
//  1. a non-retryable type name → give up;
//  2. an HTTP status 400–499 other than 429 → give up;
//  3. a retryable type name, or an HTTP status of 500 or above → retry;
//  4. anything else → retry (conservative).
//
// httpStatus 0 means the error carried no status. errorType may be
// qualified; see matchType for how qualified names match. Names match
// case-sensitively, as class names do.
func (p *Policy) Classify(errorType string, httpStatus uint32) Classification {
	in := classifyInput{errorType: errorType, httpStatus: httpStatus}
	for _, rule := range classifyRules {
		if c, ok := rule(p, in); ok {
			return c
		}
	}
	panic("scheduler: the last classification rule must always decide")
}

// qualifierSeparators end a qualifier in a type name: '.' (Python, Java, C#,
// Go's %T), ':' (Ruby's and C++'s "::", Rust's "::"), '\\' (PHP
// namespaces), '/' (Go import paths, JavaScript module paths) and '$' (Java
// nested classes as Class.getName prints them). None of them occurs inside a
// plain class name, so splitting on them can only strip a qualifier.
const qualifierSeparators = ".:\\/$"

// baseName returns the last component of a qualified type name, without a
// Go pointer's leading '*': "requests.exceptions.ConnectionError" →
// "ConnectionError", "Net::ReadTimeout" → "ReadTimeout", "*net.OpError" →
// "OpError". It returns name itself when there is no qualifier.
func baseName(name string) string {
	if i := strings.LastIndexAny(name, qualifierSeparators); i >= 0 {
		return name[i+1:]
	}
	return strings.TrimLeft(name, "*")
}

// matchType reports whether name is in set, either whole (so that a
// configured qualified name such as "myapp.errors.Timeout" matches only
// that type) or by its last qualified component (so that
// "requests.exceptions.ConnectionError" matches "ConnectionError"). It
// returns the set entry that matched.
func matchType(set map[string]struct{}, name string) (string, bool) {
	if name == "" {
		return "", false
	}
	if _, ok := set[name]; ok {
		return name, true
	}
	if base := baseName(name); base != name && base != "" {
		if _, ok := set[base]; ok {
			return base, true
		}
	}
	return "", false
}

// typeName renders the reported type for a reason, saying which set entry
// a qualified name matched.
func typeName(reported, matched string) string {
	if reported == matched {
		return displayName(reported)
	}
	return displayName(reported) + " (as " + matched + ")"
}

// maxDisplayName bounds how much of a reported type name a reason quotes:
// the name is worker-supplied data, and a reason is one sentence.
const maxDisplayName = 200

// displayName shows a worker-supplied type name in a reason: as is when it
// is printable and has no spaces, quoted otherwise, shortened when long.
func displayName(s string) string {
	if len(s) > maxDisplayName {
		cut := maxDisplayName
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	if q := strconv.Quote(s); q[1:len(q)-1] != s || strings.ContainsAny(s, " \u00a0") {
		return q
	}
	return s
}

// typeSet builds a lookup set from name lists.
func typeSet(lists ...[]string) map[string]struct{} {
	set := make(map[string]struct{})
	for _, l := range lists {
		for _, n := range l {
			set[n] = struct{}{}
		}
	}
	return set
}

// sortedNames lists a set's names in order, for descriptions.
func sortedNames(set map[string]struct{}) []string {
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
