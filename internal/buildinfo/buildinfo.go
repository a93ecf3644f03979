// Package buildinfo says which build of retryd is running, from what the
// Go toolchain stamps into every binary (module version, VCS revision), so
// that no release step has to remember an -ldflags line.
package buildinfo

import (
	"runtime/debug"
	"strings"
)

// Info identifies a build.
type Info struct {
	// Version is the module version: a tag (v0.3.1) when built from a
	// module download or a tagged checkout, else Go's pseudo-version or
	// "(devel)".
	Version string
	// Revision is the VCS commit; "" when not built in a checkout (go run
	// and go test do not stamp it).
	Revision string
	// Modified is set when the checkout had uncommitted changes.
	Modified bool
	// GoVersion is the toolchain that built the binary.
	GoVersion string
}

// Read returns the running binary's build information.
func Read() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Info{Version: "(unknown)"}
	}
	return fromBuildInfo(bi)
}

func fromBuildInfo(bi *debug.BuildInfo) Info {
	info := Info{Version: bi.Main.Version, GoVersion: bi.GoVersion}
	if info.Version == "" {
		info.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	return info
}

// String is the one line of `retryd --version`:
// "retryd v0.3.1 (revision 1a2b3c4d5e6f, modified) go1.26.8".
func (i Info) String() string {
	var b strings.Builder
	b.WriteString("retryd ")
	b.WriteString(i.Version)
	if i.Revision != "" {
		b.WriteString(" (revision ")
		b.WriteString(i.Revision[:min(12, len(i.Revision))])
		if i.Modified {
			b.WriteString(", modified")
		}
		b.WriteString(")")
	}
	if i.GoVersion != "" {
		b.WriteString(" ")
		b.WriteString(i.GoVersion)
	}
	return b.String()
}
