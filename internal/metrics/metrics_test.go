package metrics

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/internal/teststore"
	"github.com/retryd/retryd/store"
)

// counters gathers every sample of the named counter or gauge, keyed by its
// label values joined with ",".
func counters(t *testing.T, m *Metrics, name string) map[string]float64 {
	t.Helper()
	families, err := m.Registry.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			key := ""
			for i, l := range s.GetLabel() {
				if i > 0 {
					key += ","
				}
				key += l.GetName() + "=" + l.GetValue()
			}
			out[key] = s.GetCounter().GetValue() + s.GetGauge().GetValue()
		}
	}
	return out
}

// TestExpired: retention removals are counted by reason, both reasons are
// exported before the first removal, and stats hours have their own counter.
func TestExpired(t *testing.T) {
	t.Parallel()
	m := New()
	require.Equal(t, map[string]float64{"reason=age": 0, "reason=count": 0}, counters(t, m, "retryd_jobs_expired_total"))

	m.Expired(store.ExpireResult{ByAge: 3, ByCount: 1000, StatsHours: 2})
	m.Expired(store.ExpireResult{ByCount: 5, More: true})
	require.Equal(t, map[string]float64{"reason=age": 3, "reason=count": 1005}, counters(t, m, "retryd_jobs_expired_total"))
	require.Equal(t, map[string]float64{"": 2}, counters(t, m, "retryd_stats_hours_expired_total"))
}

// TestClock: the clock gauges read the latest measurement at each scrape,
// and exist only once registered (a replica on its own clock has none).
func TestClock(t *testing.T) {
	t.Parallel()
	gauge := func(m *Metrics, name string) (float64, bool) {
		families, err := m.Registry.Gather()
		require.NoError(t, err)
		for _, f := range families {
			if f.GetName() == name {
				return f.GetMetric()[0].GetGauge().GetValue(), true
			}
		}
		return 0, false
	}
	m := New()
	_, ok := gauge(m, "retryd_clock_skew_seconds")
	require.False(t, ok, "not before RegisterClock")

	skew, rtt := 3*time.Second, 250*time.Microsecond
	m.RegisterClock(func() (time.Duration, time.Duration) { return skew, rtt })
	v, ok := gauge(m, "retryd_clock_skew_seconds")
	require.True(t, ok)
	require.Equal(t, 3.0, v)
	v, _ = gauge(m, "retryd_clock_rtt_seconds")
	require.Equal(t, 0.00025, v)
	skew = -1500 * time.Millisecond
	v, _ = gauge(m, "retryd_clock_skew_seconds")
	require.Equal(t, -1.5, v, "read at scrape time")
}

// TestBuildInfo: retryd_build_info is 1, labelled with the build.
func TestBuildInfo(t *testing.T) {
	t.Parallel()
	got := counters(t, New(), "retryd_build_info")
	require.Len(t, got, 1)
	for labels, v := range got {
		require.Equal(t, 1.0, v)
		require.Contains(t, labels, "goversion=go1.")
		require.Contains(t, labels, "version=")
	}
}

// TestBacklog: per phase, the scheduled retries and how long the earliest
// has been due on the scheduling clock, read from the store at each scrape.
func TestBacklog(t *testing.T) {
	t.Parallel()
	st := teststore.New(t, "bolt")
	clock := clockwork.NewFakeClockAt(time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC))
	m := New()
	m.RegisterBacklog(st, clock)
	require.Empty(t, counters(t, m, "retryd_backlog"))

	schedule := func(job, phase string, due time.Duration) {
		now := clock.Now()
		_, err := st.RecordFailure(t.Context(), store.Failure{JobID: job, Phase: phase, ErrorType: "Timeout", Now: now,
			Verdict: store.Verdict{Decision: store.DecisionRetry, Retryable: true, Reason: "test", NextRetryCount: 1,
				Delay: due, DueAt: now.Add(due)}})
		require.NoError(t, err)
	}
	schedule("a", "extraction", time.Minute)
	schedule("b", "extraction", 5*time.Minute)
	schedule("c", "chunking", time.Hour)
	require.Equal(t, map[string]float64{"phase=chunking": 1, "phase=extraction": 2}, counters(t, m, "retryd_backlog"))
	require.Equal(t, map[string]float64{"phase=chunking": 0, "phase=extraction": 0}, counters(t, m, "retryd_backlog_overdue_seconds"),
		"nothing is due yet")

	clock.Advance(90 * time.Second)
	require.Equal(t, map[string]float64{"phase=chunking": 0, "phase=extraction": 30}, counters(t, m, "retryd_backlog_overdue_seconds"),
		"a has been due for 30 s")
}

// exportedMetrics is the name of every metric family retryd exports: one
// observation of each, a backlog, the clock, and the RPC metrics of the
// registered services.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	m := New()
	st := teststore.New(t, "bolt")
	m.RegisterBacklog(st, clockwork.NewRealClock())
	m.RegisterClock(func() (time.Duration, time.Duration) { return 0, 0 })
	_, err := st.RecordFailure(t.Context(), store.Failure{JobID: "j", Phase: "p", ErrorType: "T", Now: time.Now(),
		Verdict: store.Verdict{Decision: store.DecisionRetry, Retryable: true, Reason: "r", NextRetryCount: 1, Delay: time.Minute, DueAt: time.Now().Add(time.Minute)}})
	require.NoError(t, err)
	m.Decided("p", "T", store.DecisionRetry)
	m.Decided("p", "T", store.DecisionGiveUp)
	m.Succeeded("p", 1)
	m.Sent("p", time.Now(), time.Now())
	m.LeaseExpired("p")
	gs := grpc.NewServer()
	retrydv1.RegisterRetryServiceServer(gs, retrydv1.UnimplementedRetryServiceServer{})
	m.GRPC.InitializeMetrics(gs)
	families, err := m.Registry.Gather()
	require.NoError(t, err)
	exported := map[string]bool{}
	for _, f := range families {
		exported[f.GetName()] = true
	}
	return exported
}

// requireExported fails when a PromQL text of source names a retryd or
// gRPC server metric that retryd does not export, so that renaming a
// metric cannot silently mute an alert or empty a panel.
func requireExported(t *testing.T, exported map[string]bool, source, promql string) {
	t.Helper()
	names := regexp.MustCompile(`\b(?:retryd|grpc_server)_[a-z_]+`).FindAllString(promql, -1)
	require.NotEmpty(t, names, "%s names no metric", source)
	for _, n := range names {
		if strings.HasSuffix(n, "_bucket") && !exported[n] {
			n = strings.TrimSuffix(n, "_bucket") // a histogram's series
		}
		require.True(t, exported[n], "%s queries %s, which retryd does not export", source, n)
	}
}

// TestAlertRulesUseExportedMetrics: every metric the alerting rules
// (deploy/prometheus/retryd-alerts.yaml, unit-tested by promtool) query is
// one retryd exports.
func TestAlertRulesUseExportedMetrics(t *testing.T) {
	t.Parallel()
	rules, err := os.ReadFile("../../deploy/prometheus/retryd-alerts.yaml")
	require.NoError(t, err)
	requireExported(t, exportedMetrics(t), "the alerting rules", string(rules))
}

// TestDashboard: every query of the Grafana dashboard
// (deploy/grafana/retryd-dashboard.json) is valid PromQL (promtool checks
// it, as a recording rule, with Grafana's variables filled in) and asks
// for metrics retryd exports.
func TestDashboard(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../deploy/grafana/retryd-dashboard.json")
	require.NoError(t, err)
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	require.NoError(t, json.Unmarshal(data, &dash))
	exported := exportedMetrics(t)
	vars := strings.NewReplacer("$__rate_interval", "5m", "$phase", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	for _, p := range dash.Panels {
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		for _, tg := range p.Targets {
			requireExported(t, exported, fmt.Sprintf("panel %q", p.Title), tg.Expr)
			expr, err := json.Marshal(vars.Replace(tg.Expr)) // a JSON string is a YAML string
			require.NoError(t, err)
			fmt.Fprintf(&rules, "      - record: panel_%d\n        expr: %s\n", n, expr)
			n++
		}
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	require.NoError(t, os.WriteFile(path, []byte(rules.String()), 0o600))
	promtool, err := exec.LookPath("promtool")
	require.NoError(t, err, "promtool not found: install it with `apt-get install prometheus` (Debian), or run `make deps`")
	out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput()
	require.NoError(t, err, "promtool check rules:\n%s", out)
}
