package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/retryd/retryd/store"
)

// DispatcherConfig configures a Dispatcher.
type DispatcherConfig struct {
	// Store holds the schedule. Required.
	Store store.Store
	// Clock drives every wake-up and every "now". Defaults to the real clock.
	Clock clockwork.Clock
	// Logger receives claim and store errors. Defaults to slog.Default().
	Logger *slog.Logger
	// LeaseDuration is how long a task stays leased when the subscriber does
	// not ask for another duration. Defaults to 5 minutes.
	LeaseDuration time.Duration
	// MaxSleep bounds how long the loop trusts its computed wake-up without
	// asking the store again. Wake-ups come from store events (including
	// other replicas'); this is only the safety net for a lost event.
	// Defaults to 2 seconds.
	MaxSleep time.Duration
	// RetryBackoff is the pause after a store error before trying again, so
	// that an unreachable store does not turn the loop into a busy loop.
	// Defaults to 250 milliseconds.
	RetryBackoff time.Duration
	// ClaimAhead is how long before a retry's due time the dispatcher
	// claims it. The stream then holds the task and sends it at its due
	// time exactly (Subscription.AwaitDue), never earlier: what this buys is
	// that the retries falling due within ClaimAhead of each other are
	// leased by one Claim (one round trip to Redis, one commit of the
	// embedded store) instead of one Claim each, and that the claim's own
	// time is spent before the due time rather than after it. Its cost is
	// that a claimed task takes its stream's room (and, should the replica
	// die in between, is only seen again when its lease expires) up to
	// ClaimAhead sooner. Zero means DefaultClaimAhead; negative turns
	// claiming ahead off.
	ClaimAhead time.Duration
	// OnClaimed, when set, is called for every task handed to a
	// subscription (metrics). It must not block.
	OnClaimed func(t store.Task, now time.Time)
}

func (c *DispatcherConfig) setDefaults() error {
	if c.Store == nil {
		return errors.New("scheduler: DispatcherConfig.Store is required")
	}
	if c.Clock == nil {
		c.Clock = clockwork.NewRealClock()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.LeaseDuration == 0 {
		c.LeaseDuration = 5 * time.Minute
	}
	if c.LeaseDuration < 0 {
		return fmt.Errorf("scheduler: DispatcherConfig.LeaseDuration must be positive, got %v", c.LeaseDuration)
	}
	if c.MaxSleep <= 0 {
		c.MaxSleep = 2 * time.Second
	}
	if c.RetryBackoff <= 0 {
		c.RetryBackoff = 250 * time.Millisecond
	}
	switch {
	case c.ClaimAhead == 0:
		c.ClaimAhead = DefaultClaimAhead
	case c.ClaimAhead < 0:
		c.ClaimAhead = 0
	}
	return nil
}

// DefaultClaimAhead is DispatcherConfig.ClaimAhead's default: twice the
// Go timer's lateness (timerSlack), so that the loop's own wake-up needs
// no active wait, and short enough that a held task's lease and the room
// it takes are a few milliseconds' worth.
const DefaultClaimAhead = 2 * time.Millisecond

// Dispatcher hands due retries to subscriptions (one per Dispatch stream).
// It sleeps until the earliest due time of the phases that have a free
// subscriber and wakes early on store events: a retry scheduled sooner (by
// this process or another replica on the same Redis), or a lease released,
// which frees room on the stream that held it.
type Dispatcher struct {
	cfg DispatcherConfig

	wake chan struct{}

	mu     sync.Mutex
	subs   []*Subscription
	next   int                      // round-robin start
	leases map[string]*Subscription // lease id → holder, for unreported tasks

	// Owned by the loop goroutine (which also handles the events), so
	// that filtering the stream of store events takes no lock.
	target    time.Time           // the loop's current wake-up
	targetDue bool                // target is a due time (not the MaxSleep safety net)
	roomFor   map[string]struct{} // phases that had a subscriber with room when the loop went to sleep
	groups    []*claimGroup       // scratch for claimGroups
	drained   map[string]struct{} // scratch for dispatchDue
	phaseList []string            // scratch for nextWake

	// activeWait is false for a fake clock (tests), whose time only moves
	// when the test advances it: the loop then never waits actively.
	activeWait bool

	lifecycle sync.Mutex
	cancel    context.CancelFunc
	done      chan struct{}
	stopped   bool
}

// NewDispatcher checks the configuration and fills its defaults.
func NewDispatcher(cfg DispatcherConfig) (*Dispatcher, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	_, fake := cfg.Clock.(interface{ Advance(time.Duration) })
	return &Dispatcher{
		cfg:        cfg,
		activeWait: !fake,
		wake:       make(chan struct{}, 1),
		leases:     make(map[string]*Subscription),
		roomFor:    make(map[string]struct{}),
		drained:    make(map[string]struct{}),
	}, nil
}

// Start subscribes to store events and starts the dispatch loop. It returns
// once the event subscription is in place, so that no event is missed.
func (d *Dispatcher) Start(ctx context.Context) error {
	d.lifecycle.Lock()
	defer d.lifecycle.Unlock()
	if d.stopped {
		return errors.New("scheduler: dispatcher already stopped")
	}
	if d.cancel != nil {
		return errors.New("scheduler: dispatcher already started")
	}
	ctx, cancel := context.WithCancel(ctx)
	events, err := d.cfg.Store.Subscribe(ctx)
	if err != nil {
		cancel()
		return fmt.Errorf("subscribe to store events: %w", err)
	}
	d.cancel = cancel
	d.done = make(chan struct{})
	go d.loop(ctx, events)
	return nil
}

// Stop ends the loop and every subscription: their streams end, and tasks
// claimed but not yet sent go back to the schedule. Idempotent; safe before
// Start.
func (d *Dispatcher) Stop() {
	d.lifecycle.Lock()
	d.stopped = true
	cancel, done := d.cancel, d.done
	d.lifecycle.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	d.mu.Lock()
	subs := slices.Clone(d.subs)
	d.mu.Unlock()
	for _, s := range subs {
		s.end()
	}
}

// SubscribeRequest describes one Dispatch stream.
type SubscribeRequest struct {
	Phases      []string
	WorkerID    string
	MaxInFlight int
	// LeaseFor overrides the configured lease duration when positive.
	LeaseFor time.Duration
}

// Subscribe registers a stream. Tasks arrive on Tasks(); the caller must
// call Close when the stream ends.
func (d *Dispatcher) Subscribe(r SubscribeRequest) (*Subscription, error) {
	if len(r.Phases) == 0 {
		return nil, errors.New("scheduler: a subscription needs at least one phase")
	}
	if r.MaxInFlight <= 0 {
		r.MaxInFlight = 1
	}
	if r.LeaseFor <= 0 {
		r.LeaseFor = d.cfg.LeaseDuration
	}
	phases := slices.Clone(r.Phases)
	sorted := slices.Compact(slices.Sorted(slices.Values(phases)))
	s := &Subscription{
		d:        d,
		phases:   phases,
		workerID: r.WorkerID,
		leaseFor: r.LeaseFor,
		claimKey: fmt.Sprintf("%q %d %q", sorted, r.LeaseFor, r.WorkerID),
		max:      r.MaxInFlight,
		tasks:    make(chan store.Task, r.MaxInFlight),
		ended:    make(chan struct{}),
		leases:   make(map[string]struct{}),
	}
	d.lifecycle.Lock()
	stopped := d.stopped
	d.lifecycle.Unlock()
	if stopped {
		return nil, errors.New("scheduler: dispatcher is stopping")
	}
	d.mu.Lock()
	d.subs = append(d.subs, s)
	d.mu.Unlock()
	d.poke()
	return s, nil
}

// LeaseReleased tells the dispatcher that a lease ended (its report was
// recorded), so the stream that held it has room again. The store's events
// say the same, later; both are harmless together.
func (d *Dispatcher) LeaseReleased(leaseID string) {
	d.mu.Lock()
	s, ok := d.leases[leaseID]
	if ok {
		delete(d.leases, leaseID)
		delete(s.leases, leaseID)
	}
	d.mu.Unlock()
	if ok {
		d.poke()
	}
}

// poke wakes the loop without blocking.
func (d *Dispatcher) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *Dispatcher) loop(ctx context.Context, events <-chan store.Event) {
	defer close(d.done)
	// The timer is made on the first pass, so that it is never armed for a
	// wake-up the loop did not compute.
	var timer clockwork.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		claimFailed := d.dispatchDue(ctx)
		if ctx.Err() != nil {
			return
		}
		// Room opened during the pass (a report released a lease): claim
		// again at once. Under load this is the common case, and the
		// store's earliest due time need not be read at all. After a
		// failed claim the loop goes the long way, through the back-off.
		if !claimFailed {
			select {
			case <-d.wake:
				continue
			default:
			}
		}
		wait, err := d.nextWake(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			d.cfg.Logger.Warn("dispatcher: reading the next due time failed", "err", err)
			wait = d.cfg.RetryBackoff
		}
		// A store that answers reads but refuses writes (a replica after a
		// failover: READONLY) says the retry is due now while every claim
		// fails: without the pause the loop would spin.
		if claimFailed {
			wait, d.targetDue = max(wait, d.cfg.RetryBackoff), false
		}
		// A wake-up for a due time comes ClaimAhead before it (see
		// DispatcherConfig.ClaimAhead). Go's timers fire up to timerSlack
		// late, so with a shorter ClaimAhead the timer is armed timerSlack
		// early and the rest waited out actively (awaitTarget).
		if d.targetDue {
			lead := d.cfg.ClaimAhead
			if d.activeWait {
				lead = max(lead, timerSlack)
			}
			wait = max(wait-lead, 0)
		}
		if timer == nil {
			timer = d.cfg.Clock.NewTimer(wait)
		} else {
			if !timer.Stop() {
				select {
				case <-timer.Chan():
				default:
				}
			}
			timer.Reset(wait)
		}
		if !d.sleep(ctx, timer, events) {
			return
		}
	}
}

// sleep waits for the timer, a poke or a relevant event. It reports false
// when the loop must end.
func (d *Dispatcher) sleep(ctx context.Context, timer clockwork.Timer, events <-chan store.Event) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case <-timer.Chan():
			d.awaitTarget(ctx)
			return true
		case <-d.wake:
			return true
		case ev, ok := <-events:
			if !ok {
				return false
			}
			if d.handleEvent(ev) {
				return true
			}
		}
	}
}

// timerSlack is how late a Go timer may fire on Linux: the runtime's
// network poller sleeps in whole milliseconds (epoll_wait), so a timer due
// in 200µs fires after about 1.1ms, one due in 1.3ms after about 2.3ms
// (golang/go#53824; measured on the benchmark machine: 0.45–0.95ms late at
// the median). A wake-up for a due time is therefore armed timerSlack
// early and the rest is slept on the kernel's high-resolution timer
// (waitUntil), which lands within about 0.1ms.
const timerSlack = time.Millisecond

// awaitTarget sleeps out the last stretch before the claim of a due time
// (ClaimAhead before it) after the timer fired, armed up to timerSlack
// earlier, so that the retry is claimed in time and not up to a
// millisecond later.
func (d *Dispatcher) awaitTarget(ctx context.Context) {
	if !d.targetDue || !d.activeWait {
		return
	}
	waitUntil(ctx, d.cfg.Clock, d.target.Add(-d.cfg.ClaimAhead))
}

// waitUntil sleeps until t on clock on the kernel's high-resolution timer,
// at most timerSlack per sleep (how long a canceled ctx may go unnoticed).
// Callers have slept on a Go timer until about timerSlack before t, so it
// is mostly one nanosleep: it leaves the processor to Redis and the
// handlers (spinning made the lag worse whenever the machine was busy), and
// costs one system call, where 100 µs steps cost ten and measurably more
// CPU under load, when every stream waits out tasks claimed ahead.
func waitUntil(ctx context.Context, clock clockwork.Clock, t time.Time) {
	for ctx.Err() == nil {
		rest := clock.Until(t)
		if rest <= 0 {
			return
		}
		sleepShort(min(rest, timerSlack))
	}
}

// handleEvent applies an event and reports whether it should wake the loop.
func (d *Dispatcher) handleEvent(ev store.Event) bool {
	switch ev.Kind {
	case store.EventLeaseReleased:
		d.mu.Lock()
		s, ok := d.leases[ev.LeaseID]
		if ok {
			delete(d.leases, ev.LeaseID)
			delete(s.leases, ev.LeaseID)
		}
		d.mu.Unlock()
		return ok
	case store.EventScheduled:
		// Every report schedules a retry, so these come by the thousand a
		// second under load; most are due after the current wake-up or for
		// phases whose streams are all full, and are dropped here without
		// a lock. Room that opens later pokes the loop, which then claims
		// and reads the next due time anyway.
		if !ev.DueAt.Before(d.target) {
			return false
		}
		_, ok := d.roomFor[ev.Phase]
		return ok
	}
	return false
}

// claimGroup is the subscriptions with room that one Claim serves: those
// with the same phases, lease duration and worker id (a worker's several
// streams), for which one store call leases the tasks of all.
type claimGroup struct {
	key      string
	phases   []string
	leaseFor time.Duration
	workerID string
	subs     []*Subscription
	room     int
}

// dispatchDue claims due tasks for every subscription with room: one Claim
// per claimGroup, whose tasks are shared out among the group's streams.
// The round starts at a different subscription each time, so that groups
// of the same phases take turns at the earliest due tasks.
//
// A claim that returns less than it asked for has taken everything due in
// its phases, so the pass skips the groups whose phases are all drained:
// with several workers on one phase, a pass makes one claim rather than
// one per worker when little is due (each claim is a round trip to Redis,
// or a commit of the embedded store). What falls due meanwhile is the next
// pass's. It reports whether a claim failed.
func (d *Dispatcher) dispatchDue(ctx context.Context) (claimFailed bool) {
	clear(d.drained)
	for _, g := range d.claimGroups() {
		if ctx.Err() != nil {
			return false
		}
		if d.allDrained(g.phases) {
			continue
		}
		now := d.cfg.Clock.Now()
		// Claimed as of ClaimAhead from now: what falls due by then is
		// leased now and sent at its due time by the stream (AwaitDue).
		tasks, err := d.cfg.Store.Claim(ctx, store.ClaimRequest{
			Phases:   g.phases,
			Limit:    g.room,
			Now:      now.Add(d.cfg.ClaimAhead),
			LeaseFor: g.leaseFor,
			WorkerID: g.workerID,
		})
		if err != nil {
			if ctx.Err() == nil {
				d.cfg.Logger.Warn("dispatcher: claim failed", "phases", g.phases, "err", err)
			}
			return true
		}
		if len(tasks) < g.room {
			for _, p := range g.phases {
				d.drained[p] = struct{}{}
			}
		}
		if len(tasks) > 0 {
			Fault(FaultAfterClaim)
			d.deliver(g, tasks, now)
		}
	}
	return false
}

// allDrained reports whether an earlier claim of this pass took everything
// due in each of the phases.
func (d *Dispatcher) allDrained(phases []string) bool {
	for _, p := range phases {
		if _, ok := d.drained[p]; !ok {
			return false
		}
	}
	return true
}

// claimGroups groups the subscriptions that have room, in the loop's
// scratch groups.
func (d *Dispatcher) claimGroups() []*claimGroup {
	for _, g := range d.groups {
		clear(g.subs)
		*g = claimGroup{subs: g.subs[:0]}
	}
	used := 0
	d.mu.Lock()
	defer d.mu.Unlock()
	n := len(d.subs)
	for i := range n {
		s := d.subs[(d.next+i)%n]
		room := s.free()
		if room == 0 {
			continue
		}
		var g *claimGroup
		for _, x := range d.groups[:used] {
			if x.key == s.claimKey {
				g = x
				break
			}
		}
		if g == nil {
			if used == len(d.groups) {
				d.groups = append(d.groups, &claimGroup{})
			}
			g = d.groups[used]
			used++
			g.key, g.phases, g.leaseFor, g.workerID = s.claimKey, s.phases, s.leaseFor, s.workerID
		}
		g.subs = append(g.subs, s)
		g.room += room
	}
	if n > 0 {
		d.next = (d.next + 1) % n
	}
	return d.groups[:used]
}

// deliver hands a group's claimed tasks to its subscriptions under one
// lock, a task at a time to each stream with room in turn. A task that no
// stream of the group can take any more (they closed meanwhile) goes back
// to the schedule.
func (d *Dispatcher) deliver(g *claimGroup, tasks []store.Task, now time.Time) {
	var unsent []int // indexes into tasks
	d.mu.Lock()
	next := 0
	for i, t := range tasks {
		placed := false
		for range g.subs {
			s := g.subs[next]
			next = (next + 1) % len(g.subs)
			if s.free() == 0 {
				continue
			}
			select {
			case s.tasks <- t:
				s.leases[t.LeaseID] = struct{}{}
				d.leases[t.LeaseID] = s
				placed = true
			default:
				// free() counted the room in the channel, so this is
				// unreachable; should it ever happen, the task goes back
				// rather than block the loop (and with it every stream)
				// behind one stream's reader.
			}
			break
		}
		if !placed {
			unsent = append(unsent, i)
		}
	}
	d.mu.Unlock()
	for _, i := range unsent {
		g.subs[0].giveBack(tasks[i])
	}
	if d.cfg.OnClaimed != nil {
		for i, t := range tasks {
			if !slices.Contains(unsent, i) {
				d.cfg.OnClaimed(t, now)
			}
		}
	}
}

// nextWake returns how long to sleep: until the earliest due time of the
// phases with a free subscriber, at most MaxSleep.
func (d *Dispatcher) nextWake(ctx context.Context) (time.Duration, error) {
	clear(d.roomFor)
	phases := d.phaseList[:0]
	d.mu.Lock()
	for _, s := range d.subs {
		if s.free() == 0 {
			continue
		}
		for _, p := range s.phases {
			if _, ok := d.roomFor[p]; !ok {
				d.roomFor[p] = struct{}{}
				phases = append(phases, p)
			}
		}
	}
	d.mu.Unlock()
	d.phaseList = phases

	wait := d.cfg.MaxSleep
	target := time.Time{}
	if len(phases) > 0 {
		due, ok, err := d.cfg.Store.NextDue(ctx, phases)
		if err != nil {
			d.target, d.targetDue = d.cfg.Clock.Now().Add(d.cfg.RetryBackoff), false
			return 0, err
		}
		if ok {
			until := d.cfg.Clock.Until(due)
			if until < 0 {
				until = 0
			}
			if until < wait {
				wait = until
				target = due
			}
		}
	}
	d.targetDue = !target.IsZero()
	if target.IsZero() {
		target = d.cfg.Clock.Now().Add(wait)
	}
	d.target = target
	return wait, nil
}

// Subscription is one Dispatch stream's view of the dispatcher.
type Subscription struct {
	d        *Dispatcher
	phases   []string
	workerID string
	leaseFor time.Duration
	claimKey string // phases, lease duration and worker id: equal keys share a Claim
	max      int
	tasks    chan store.Task
	ended    chan struct{}
	endOnce  sync.Once

	// Guarded by d.mu.
	leases map[string]struct{} // claimed and not yet reported
	closed bool
}

// Tasks delivers claimed tasks; each is leased to this stream.
func (s *Subscription) Tasks() <-chan store.Task { return s.tasks }

// AwaitDue waits until the task is due on the dispatcher's clock: a task
// claimed ahead of its due time (DispatcherConfig.ClaimAhead) must not
// reach its worker early. It returns at once for a task already due, and
// ctx's error when ctx ends first (the task was not sent: give it back
// with Unsent).
func (s *Subscription) AwaitDue(ctx context.Context, t store.Task) error {
	clock := s.d.cfg.Clock
	rest := clock.Until(t.DueAt)
	if rest <= 0 {
		return nil
	}
	if s.d.activeWait {
		rest -= timerSlack
	}
	if rest > 0 {
		timer := clock.NewTimer(rest)
		defer timer.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.Chan():
		}
	}
	if s.d.activeWait {
		waitUntil(ctx, clock, t.DueAt)
	}
	return ctx.Err()
}

// Ended is closed when the dispatcher stops: the stream should end.
func (s *Subscription) Ended() <-chan struct{} { return s.ended }

// LeaseFor is the lease duration of this stream's tasks.
func (s *Subscription) LeaseFor() time.Duration { return s.leaseFor }

// free is the room left under MaxInFlight, and in the task channel: a
// task whose lease ended (reaped, canceled) while it waited in the channel
// for a stream that does not read no longer counts as a lease but still
// fills a slot, and deliver must never block. Callers hold d.mu.
func (s *Subscription) free() int {
	if s.closed {
		return 0
	}
	return max(min(s.max-len(s.leases), cap(s.tasks)-len(s.tasks)), 0)
}

func (s *Subscription) end() { s.endOnce.Do(func() { close(s.ended) }) }

// Unsent gives back a task that could not be sent: it is scheduled again
// at its due time without counting an attempt.
func (s *Subscription) Unsent(t store.Task) {
	s.d.mu.Lock()
	delete(s.leases, t.LeaseID)
	delete(s.d.leases, t.LeaseID)
	s.d.mu.Unlock()
	s.giveBack(t)
	s.d.poke()
}

func (s *Subscription) giveBack(t store.Task) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.d.cfg.Store.ReturnLease(ctx, t.JobID, t.LeaseID); err != nil && !errors.Is(err, store.ErrLeaseNotHeld) {
		// The lease stays and expires; the reaper then records the attempt
		// as failed (LeaseExpired) and it is retried: nothing is lost.
		s.d.cfg.Logger.Warn("dispatcher: returning an unsent task failed; it comes back when its lease expires",
			"job_id", t.JobID, "lease_id", t.LeaseID, "err", err)
	}
}

// Close unregisters the stream. Tasks claimed but not sent go back to the
// schedule; tasks sent and not reported stay leased to the worker, which
// may still report them (on any connection) until the lease expires.
func (s *Subscription) Close() {
	d := s.d
	d.mu.Lock()
	if s.closed {
		d.mu.Unlock()
		return
	}
	s.closed = true
	d.subs = slices.DeleteFunc(d.subs, func(x *Subscription) bool { return x == s })
	if d.next >= len(d.subs) {
		d.next = 0
	}
	for id := range s.leases {
		delete(d.leases, id)
	}
	var unsent []store.Task
	for {
		select {
		case t := <-s.tasks:
			unsent = append(unsent, t)
			continue
		default:
		}
		break
	}
	d.mu.Unlock()
	s.end()
	for _, t := range unsent {
		s.giveBack(t)
	}
}
