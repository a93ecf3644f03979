package boltstore

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/store"
)

// crashChildEnv names the store file a TestKill9 child process writes to.
const crashChildEnv = "RETRYD_BOLTSTORE_CRASH_CHILD"

// TestKill9 runs writers in a child process, kills it with SIGKILL in the
// middle of its commits, and reopens the file: every report and lease the
// child was told had been stored is there, the file opens cleanly (the
// lock died with the process), and every scheduled retry is handed out
// exactly once — the leased ones after their lease, through the reaper's
// ExpiredLeases.
func TestKill9(t *testing.T) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(t, path)
		return
	}
	t.Parallel()
	path := filepath.Join(t.TempDir(), "retryd.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())

	acked, leased := map[string]bool{}, map[string]bool{}
	lines := bufio.NewScanner(out)
	for len(acked) < 300 && lines.Scan() {
		kind, id, _ := strings.Cut(lines.Text(), " ")
		switch kind {
		case "acked":
			acked[id] = true
		case "leased":
			leased[id] = true
		}
	}
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	require.Len(t, acked, 300, "the child stopped early (scan error: %v)", lines.Err())
	require.NotEmpty(t, leased, "the child leased nothing before it was killed")

	s, err := Open(path, Options{})
	require.NoError(t, err, "reopen after SIGKILL")
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	ctx := context.Background()

	// The leases the child saw come back to the reaper once expired; the
	// rest of the schedule is claimable. Together: each job exactly once.
	expired, err := s.ExpiredLeases(ctx, base.Add(24*time.Hour), 100000)
	require.NoError(t, err)
	tasks, err := s.Claim(ctx, store.ClaimRequest{Phases: []string{"extraction"}, Limit: 100000, Now: base.Add(24 * time.Hour), LeaseFor: time.Minute})
	require.NoError(t, err)
	handed := map[string]int{}
	for _, l := range expired {
		handed[l.JobID]++
	}
	for _, task := range tasks {
		handed[task.JobID]++
	}
	for id, n := range handed {
		require.Equal(t, 1, n, "job %s is both leased and scheduled", id)
	}
	for id := range acked {
		require.Equal(t, 1, handed[id], "acknowledged job %s is neither scheduled nor leased after the crash", id)
		j, err := s.GetJob(ctx, id)
		require.NoError(t, err)
		require.Len(t, j.Attempts, 1)
	}
	leasedNow := map[string]bool{}
	for _, l := range expired {
		leasedNow[l.JobID] = true
	}
	for id := range leased {
		require.True(t, leasedNow[id], "acknowledged lease of %s is gone after the crash", id)
	}
	t.Logf("killed after %d acknowledged reports and %d leases; found %d jobs (%d leased)", len(acked), len(leased), len(handed), len(expired))
}

// crashChild writes until it is killed: 8 reporters record first failures
// and print "acked <job>" once RecordFailure returns, and a dispatcher
// claims and prints "leased <job>" once Claim returns.
func crashChild(t *testing.T, path string) {
	s, err := Open(path, Options{})
	require.NoError(t, err)
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(os.Stdout, format+"\n", args...)
	}
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second) // the parent kills us long before
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; time.Now().Before(deadline); i++ {
				id := fmt.Sprintf("w%d-%06d", w, i)
				_, err := s.RecordFailure(ctx, store.Failure{
					JobID: id, Phase: "extraction", ErrorType: "Timeout", ErrorMessage: "timed out",
					Payload: []byte(id), Now: base,
					Verdict: store.Verdict{
						Decision: store.DecisionRetry, Retryable: true, Reason: "retry.",
						NextRetryCount: 1, Delay: time.Minute, DueAt: base.Add(time.Minute),
					},
				})
				if err != nil {
					t.Error(err)
					return
				}
				say("acked %s", id)
			}
		})
	}
	wg.Go(func() {
		for time.Now().Before(deadline) {
			tasks, err := s.Claim(ctx, store.ClaimRequest{
				Phases: []string{"extraction"}, Limit: 3, Now: base.Add(time.Minute), LeaseFor: time.Hour, WorkerID: "child",
			})
			if err != nil {
				t.Error(err)
				return
			}
			for _, task := range tasks {
				say("leased %s", task.JobID)
			}
		}
	})
	wg.Wait()
}
