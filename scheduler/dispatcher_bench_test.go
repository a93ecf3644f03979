package scheduler_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/retryd/retryd/scheduler"
	"github.com/retryd/retryd/store"
)

// dueStore is a store.Store whose every phase always has due tasks: Claim
// returns as many as asked. It counts the calls the dispatcher makes, so
// that BenchmarkDispatch measures the dispatcher alone (its loop, locks,
// grouping and hand-over) and shows the round trips it would make to a real
// store. Methods the dispatcher does not call are left to the embedded nil
// interface (they would panic).
type dueStore struct {
	store.Store
	// rtt is how long each call takes, as a round trip to Redis would.
	rtt     time.Duration
	claims  atomic.Int64
	nextDue atomic.Int64
	seq     atomic.Int64
}

func (s *dueStore) Claim(_ context.Context, c store.ClaimRequest) ([]store.Task, error) {
	s.claims.Add(1)
	s.wait()
	tasks := make([]store.Task, c.Limit)
	for i := range tasks {
		n := s.seq.Add(1)
		id := strconv.FormatInt(n, 10)
		tasks[i] = store.Task{JobID: id, Phase: c.Phases[0], RetryCount: 1, LeaseID: "lease-" + id,
			DueAt: c.Now, LeaseExpiresAt: c.Now.Add(c.LeaseFor)}
	}
	return tasks, nil
}

func (s *dueStore) NextDue(context.Context, []string) (time.Time, bool, error) {
	s.nextDue.Add(1)
	s.wait()
	return time.Now(), true, nil
}

func (s *dueStore) wait() {
	if s.rtt > 0 {
		time.Sleep(s.rtt)
	}
}

func (s *dueStore) Subscribe(ctx context.Context) (<-chan store.Event, error) {
	ch := make(chan store.Event)
	go func() { <-ctx.Done(); close(ch) }()
	return ch, nil
}

func (s *dueStore) ReturnLease(context.Context, string, string) error { return nil }

// BenchmarkDispatch measures the dispatcher's cost per task handed out when
// work is always due and every task is reported at once: each stream's
// reader releases the lease of each task it receives. With rtt-0 the store
// answers at once, which measures the dispatcher's own CPU per task; with
// rtt-500us every store call takes half a millisecond, like a round trip to
// a busy Redis, which measures how many tasks a second the loop can hand
// out. It reports the store calls per task (claims/task, nextdue/task),
// which are round trips to Redis or transactions of the embedded store.
//
//	go test -run '^$' -bench Dispatch -benchmem ./scheduler/ | benchstat -
func BenchmarkDispatch(b *testing.B) {
	for _, rtt := range []time.Duration{0, 500 * time.Microsecond} {
		for _, bc := range []struct {
			name     string
			streams  int
			sameID   bool
			inFlight int
		}{
			{"one-stream", 1, true, 50},
			{"4-streams-one-worker", 4, true, 13},
			{"4-workers", 4, false, 13},
			{"16-workers", 16, false, 4},
		} {
			b.Run(fmt.Sprintf("rtt-%v/%s", rtt, bc.name), func(b *testing.B) {
				benchmarkDispatch(b, rtt, bc.streams, bc.sameID, bc.inFlight)
			})
		}
	}
}

func benchmarkDispatch(b *testing.B, rtt time.Duration, streams int, sameID bool, inFlight int) {
	{
		{
			st := &dueStore{rtt: rtt}
			d, err := scheduler.NewDispatcher(scheduler.DispatcherConfig{Store: st})
			if err != nil {
				b.Fatal(err)
			}
			if err := d.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			defer d.Stop()
			var received atomic.Int64
			done := make(chan struct{})
			var wg sync.WaitGroup
			b.ResetTimer()
			for i := range streams {
				worker := "worker"
				if !sameID {
					worker = fmt.Sprintf("worker-%d", i)
				}
				sub, err := d.Subscribe(scheduler.SubscribeRequest{Phases: []string{"extraction"}, WorkerID: worker, MaxInFlight: inFlight})
				if err != nil {
					b.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer sub.Close()
					for {
						select {
						case t := <-sub.Tasks():
							d.LeaseReleased(t.LeaseID)
							if received.Add(1) == int64(b.N) {
								close(done)
							}
						case <-done:
							return
						}
					}
				}()
			}
			<-done
			b.StopTimer()
			wg.Wait()
			n := float64(received.Load())
			b.ReportMetric(float64(st.claims.Load())/n, "claims/task")
			b.ReportMetric(float64(st.nextDue.Load())/n, "nextdue/task")
		}
	}
}
