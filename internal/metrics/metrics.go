// Package metrics holds retryd's Prometheus collectors: the gRPC RPC metrics
// of go-grpc-middleware and retryd's own (decisions, dispatch lag, backlog).
package metrics

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/retryd/retryd/internal/buildinfo"
	"github.com/retryd/retryd/store"
)

// maxErrorTypes bounds the error_type label: error types are the workers'
// input, and an unbounded label would grow Prometheus without limit.
const maxErrorTypes = 200

// otherErrorType replaces error types seen after the first maxErrorTypes.
const otherErrorType = "other"

// Metrics are the collectors of one retryd process, on their own registry.
type Metrics struct {
	Registry *prometheus.Registry
	// GRPC measures every RPC (go-grpc-middleware).
	GRPC *grpcprom.ServerMetrics

	retriesScheduled *prometheus.CounterVec
	givenUp          *prometheus.CounterVec
	successes        *prometheus.CounterVec
	leasesExpired    *prometheus.CounterVec
	dispatched       *prometheus.CounterVec
	dispatchLag      *prometheus.HistogramVec
	jobsExpired      *prometheus.CounterVec
	statsExpired     prometheus.Counter

	mu         sync.Mutex
	errorTypes map[string]struct{}
}

// New builds and registers the collectors.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		GRPC: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets([]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}),
		)),
		retriesScheduled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "retryd_retries_scheduled_total",
			Help: "Failed attempts for which a retry was scheduled, by phase and error type.",
		}, []string{"phase", "error_type"}),
		givenUp: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "retryd_given_up_total",
			Help: "Failed attempts after which retryd gave up on the job, by phase and error type.",
		}, []string{"phase", "error_type"}),
		successes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "retryd_successes_total",
			Help: "Successful attempts, by phase and whether the attempt was a retry.",
		}, []string{"phase", "retry"}),
		leasesExpired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "retryd_leases_expired_total",
			Help: "Dispatched attempts whose worker never reported before the lease expired, by phase.",
		}, []string{"phase"}),
		dispatched: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "retryd_dispatched_total",
			Help: "Tasks sent down Dispatch streams, by phase.",
		}, []string{"phase"}),
		dispatchLag: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "retryd_dispatch_lag_seconds",
			Help:    "Time from a retry's due time to the moment its task was sent to a worker.",
			Buckets: []float64{.0001, .00025, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 5, 30},
		}, []string{"phase"}),
		jobsExpired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "retryd_jobs_expired_total",
			Help: "Terminal jobs removed by the retention policy, by reason: age (--job-retention) or count (--max-terminal-jobs).",
		}, []string{"reason"}),
		statsExpired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "retryd_stats_hours_expired_total",
			Help: "Hours of retry statistics removed by the retention policy (--stats-retention).",
		}),
		errorTypes: make(map[string]struct{}),
	}
	// Both reasons are exported from the start, at zero, so that a rate()
	// over them works before the first removal.
	for _, reason := range []string{"age", "count"} {
		m.jobsExpired.WithLabelValues(reason)
	}
	build := buildinfo.Read()
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "retryd_build_info",
		Help: "Always 1; its labels say which build runs (as retryd --version).",
		ConstLabels: prometheus.Labels{"version": build.Version, "revision": build.Revision,
			"modified": strconv.FormatBool(build.Modified), "goversion": build.GoVersion},
	})
	buildInfo.Set(1)
	m.Registry.MustRegister(
		buildInfo, m.GRPC, m.retriesScheduled, m.givenUp, m.successes, m.leasesExpired,
		m.dispatched, m.dispatchLag, m.jobsExpired, m.statsExpired,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// errorTypeLabel returns t, or "other" once maxErrorTypes distinct types were seen.
func (m *Metrics) errorTypeLabel(t string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.errorTypes[t]; ok {
		return t
	}
	if len(m.errorTypes) >= maxErrorTypes {
		return otherErrorType
	}
	m.errorTypes[t] = struct{}{}
	return t
}

// Decided counts a newly recorded failure by its verdict.
func (m *Metrics) Decided(phase, errorType string, d store.Decision) {
	label := m.errorTypeLabel(errorType)
	if d == store.DecisionRetry {
		m.retriesScheduled.WithLabelValues(phase, label).Inc()
	} else {
		m.givenUp.WithLabelValues(phase, label).Inc()
	}
}

// Succeeded counts a newly recorded success.
func (m *Metrics) Succeeded(phase string, retryCount uint32) {
	retry := "false"
	if retryCount > 0 {
		retry = "true"
	}
	m.successes.WithLabelValues(phase, retry).Inc()
}

// LeaseExpired counts a lease the reaper recorded as a failed attempt.
func (m *Metrics) LeaseExpired(phase string) { m.leasesExpired.WithLabelValues(phase).Inc() }

// Sent records a task sent to a worker and its dispatch lag.
func (m *Metrics) Sent(phase string, dueAt, sentAt time.Time) {
	m.dispatched.WithLabelValues(phase).Inc()
	m.dispatchLag.WithLabelValues(phase).Observe(max(sentAt.Sub(dueAt), 0).Seconds())
}

// Expired counts what a retention pass removed.
func (m *Metrics) Expired(r store.ExpireResult) {
	m.jobsExpired.WithLabelValues("age").Add(float64(r.ByAge))
	m.jobsExpired.WithLabelValues("count").Add(float64(r.ByCount))
	m.statsExpired.Add(float64(r.StatsHours))
}

// RegisterBacklog exports the number of scheduled retries per phase and how
// long the most overdue of them has been due (by clock, the scheduling
// clock), read from the store at scrape time, when the store can count
// them.
func (m *Metrics) RegisterBacklog(s store.Store, clock clockwork.Clock) {
	bc, ok := s.(store.BacklogCounter)
	if !ok {
		return
	}
	m.Registry.MustRegister(&backlogCollector{store: bc, clock: clock})
}

// RegisterClock exports the shared clock's latest measurement of Redis's
// TIME (internal/timesync): the local clock's skew, which scheduling
// cancels but which says the host's time service is broken, and the round
// trip, which bounds how far behind Redis the scheduling clock may read.
// Only a replica that schedules on Redis's clock calls it.
func (m *Metrics) RegisterClock(last func() (skew, rtt time.Duration)) {
	m.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "retryd_clock_skew_seconds",
			Help: "The local wall clock minus Redis's TIME at the last measurement (retryd schedules on Redis's clock: a skew is harmless to scheduling but means the host's time service is broken).",
		}, func() float64 { s, _ := last(); return s.Seconds() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "retryd_clock_rtt_seconds",
			Help: "Round trip of the last accepted measurement of Redis's TIME: the scheduling clock reads at most this much behind Redis's, never ahead.",
		}, func() float64 { _, r := last(); return r.Seconds() }),
	)
}

// Handler serves the registry in the Prometheus text format. A collector
// that fails (the backlog, read from the store at scrape time, while the
// store is down) leaves its samples out instead of failing the scrape:
// /metrics matters most during an outage.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry, ErrorHandling: promhttp.ContinueOnError})
}

var (
	backlogDesc = prometheus.NewDesc("retryd_backlog",
		"Retries scheduled and not yet dispatched, by phase (all replicas).", []string{"phase"}, nil)
	overdueDesc = prometheus.NewDesc("retryd_backlog_overdue_seconds",
		"How long the earliest scheduled retry of the phase has been due without being dispatched (0: none is due). "+
			"Growing without bound: no worker takes the phase's retries.", []string{"phase"}, nil)
)

type backlogCollector struct {
	store store.BacklogCounter
	clock clockwork.Clock
}

func (c *backlogCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- backlogDesc
	ch <- overdueDesc
}

func (c *backlogCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	backlog, err := c.store.Backlog(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(backlogDesc, err)
		return
	}
	now := c.clock.Now()
	for phase, b := range backlog {
		ch <- prometheus.MustNewConstMetric(backlogDesc, prometheus.GaugeValue, float64(b.Scheduled), phase)
		overdue := 0.0
		if b.Scheduled > 0 {
			overdue = max(now.Sub(b.OldestDue), 0).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(overdueDesc, prometheus.GaugeValue, overdue, phase)
	}
}
