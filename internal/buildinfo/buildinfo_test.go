package buildinfo

import (
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFromBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/retryd/retryd", Version: "v0.3.1"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "1a2b3c4d5e6f7a8b9c0d"}, {Key: "vcs.modified", Value: "true"}}}
	info := fromBuildInfo(bi)
	require.Equal(t, Info{Version: "v0.3.1", Revision: "1a2b3c4d5e6f7a8b9c0d", Modified: true, GoVersion: "go1.26.8"}, info)
	require.Equal(t, "retryd v0.3.1 (revision 1a2b3c4d5e6f, modified) go1.26.8", info.String())

	// go run and go test: no VCS stamp, no version.
	info = fromBuildInfo(&debug.BuildInfo{GoVersion: "go1.26.8"})
	require.Equal(t, "retryd (devel) go1.26.8", info.String())
}

func TestRead(t *testing.T) {
	info := Read()
	require.NotEmpty(t, info.Version)
	require.NotEmpty(t, info.GoVersion, "a test binary has build information too")
}
