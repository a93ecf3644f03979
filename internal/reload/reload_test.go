package reload

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/require"
)

type fixture struct {
	path  string
	clock *clockwork.FakeClock
	logs  *bytes.Buffer
	v     *Value[string]
	reads int
}

// setup keeps the upper-cased contents of one file; "bad" does not build.
func setup(t *testing.T, contents string) *fixture {
	t.Helper()
	f := &fixture{path: filepath.Join(t.TempDir(), "f"), clock: clockwork.NewFakeClock(), logs: &bytes.Buffer{}}
	write(t, f.path, contents)
	build := func(c [][]byte) (string, error) {
		f.reads++
		if string(c[0]) == "bad" {
			return "", errors.New("bad contents")
		}
		return strings.ToUpper(string(c[0])), nil
	}
	v, err := New("test file", []string{f.path}, build, Options{Clock: f.clock, Logger: slog.New(slog.NewTextHandler(f.logs, nil))})
	require.NoError(t, err)
	f.v = v
	return f
}

// write replaces path atomically, as a Secret mount does.
func write(t *testing.T, path, contents string) {
	t.Helper()
	tmp := path + ".tmp"
	require.NoError(t, os.WriteFile(tmp, []byte(contents), 0o600))
	require.NoError(t, os.Rename(tmp, path))
}

func TestNewFailsOnMissingOrBadFile(t *testing.T) {
	_, err := New("x", []string{filepath.Join(t.TempDir(), "none")}, func([][]byte) (int, error) { return 1, nil }, Options{})
	require.ErrorIs(t, err, os.ErrNotExist)
	path := filepath.Join(t.TempDir(), "f")
	write(t, path, "x")
	_, err = New("x", []string{path}, func([][]byte) (int, error) { return 0, errors.New("no") }, Options{})
	require.EqualError(t, err, "no")
}

// TestChecksOncePerInterval: between checks no file is read, so a burst of
// calls costs nothing.
func TestChecksOncePerInterval(t *testing.T) {
	f := setup(t, "a")
	before := f.v.nextCheck.Load()
	for range 100 {
		require.Equal(t, "A", f.v.Get())
	}
	require.Equal(t, before, f.v.nextCheck.Load())
	f.clock.Advance(DefaultInterval - time.Nanosecond)
	f.v.Get()
	require.Equal(t, before, f.v.nextCheck.Load())
	f.clock.Advance(time.Nanosecond)
	f.v.Get()
	require.Equal(t, before+DefaultInterval.Nanoseconds(), f.v.nextCheck.Load())
	require.Equal(t, 1, f.reads, "unchanged contents are not rebuilt")
}

// TestRotation: a change is in force after the interval; a change that does
// not build, or a missing file, keeps the last good value, logged once.
func TestRotation(t *testing.T) {
	f := setup(t, "a")
	write(t, f.path, "b")
	require.Equal(t, "A", f.v.Get(), "not before the interval")
	f.clock.Advance(DefaultInterval)
	require.Equal(t, "B", f.v.Get())
	require.Contains(t, f.logs.String(), "reloaded test file")

	write(t, f.path, "bad")
	f.clock.Advance(DefaultInterval)
	require.Equal(t, "B", f.v.Get())
	f.clock.Advance(DefaultInterval)
	require.Equal(t, "B", f.v.Get())
	require.Equal(t, 1, strings.Count(f.logs.String(), "changed test file rejected"))

	require.NoError(t, os.Remove(f.path))
	f.clock.Advance(DefaultInterval)
	require.Equal(t, "B", f.v.Get())
	f.clock.Advance(DefaultInterval)
	require.Equal(t, "B", f.v.Get())
	require.Equal(t, 1, strings.Count(f.logs.String(), "cannot re-read test file"))

	write(t, f.path, "c")
	f.clock.Advance(DefaultInterval)
	require.Equal(t, "C", f.v.Get())
}
