package auth

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
)

// Token limits. The lower bound keeps guessable tokens out (16 random
// bytes in base64 are 22 characters); the upper bound keeps a token inside
// any proxy's header limits.
const (
	MinTokenLen = 16
	MaxTokenLen = 4096
)

// CheckToken reports whether tok is acceptable as a bearer token: MinTokenLen
// to MaxTokenLen printable ASCII characters with no space and no comma (the
// environment lists are comma-separated). The error never quotes the token.
func CheckToken(tok string) error {
	if len(tok) < MinTokenLen || len(tok) > MaxTokenLen {
		return fmt.Errorf("a token must be %d to %d characters long (this one has %d); make one with: head -c 32 /dev/urandom | base64",
			MinTokenLen, MaxTokenLen, len(tok))
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c <= ' ' || c > '~' || c == ',' {
			return fmt.Errorf("character %d of the token is not allowed: a token is printable ASCII without spaces or commas", i+1)
		}
	}
	return nil
}

// tokenEntry is one configured token. Only its SHA-256 digest is kept: the
// lookup compares fixed-length digests, so that neither the comparison's
// time nor a token's length tells an attacker anything.
type tokenEntry struct {
	digest [sha256.Size]byte
	id     Identity
}

// tokenSet is every token of every role.
type tokenSet struct {
	entries []tokenEntry
	// count per role, for logs.
	workers, admins int
}

// add records tok for id.Role. A token given twice for the same role (in
// the environment and in a file during a rotation) counts once; a token
// given to both roles is an error, since a worker could then call admin RPCs.
func (s *tokenSet) add(tok string, id Identity) error {
	d := sha256.Sum256([]byte(tok))
	for _, e := range s.entries {
		if e.digest == d {
			if e.id.Role != id.Role {
				return fmt.Errorf("%s is also given as %s: a token may have one role only", id.Name, e.id.Name)
			}
			return nil
		}
	}
	s.entries = append(s.entries, tokenEntry{digest: d, id: id})
	if id.Role == RoleAdmin {
		s.admins++
	} else {
		s.workers++
	}
	return nil
}

// lookup finds the identity of tok. It compares tok's digest with every
// entry in constant time and does not stop at a match.
func (s *tokenSet) lookup(tok string) (Identity, bool) {
	d := sha256.Sum256([]byte(tok))
	var found Identity
	ok := 0
	for i := range s.entries {
		if subtle.ConstantTimeCompare(d[:], s.entries[i].digest[:]) == 1 {
			found, ok = s.entries[i].id, 1
		}
	}
	return found, ok == 1
}

// parseTokenFile reads a token file: one token per line; blank lines and
// lines starting with '#' are skipped, white space around a token is
// trimmed. It returns the tokens with their line numbers. Errors name the
// line, never the token.
func parseTokenFile(data []byte) ([]string, []int, error) {
	var toks []string
	var lines []int
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), MaxTokenLen+1024)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		if err := CheckToken(string(line)); err != nil {
			return nil, nil, fmt.Errorf("line %d: %w", n, err)
		}
		toks = append(toks, string(line))
		lines = append(lines, n)
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("a line is longer than %d characters", MaxTokenLen)
	}
	if len(toks) == 0 {
		return nil, nil, errors.New("holds no token (one per line; # starts a comment)")
	}
	return toks, lines, nil
}
