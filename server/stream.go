package server

import (
	"context"
	"time"

	"github.com/jonboulle/clockwork"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/scheduler"
	"github.com/retryd/retryd/store"
)

// errShuttingDown ends the streams of a replica that stops: UNAVAILABLE
// tells the worker to reconnect, to another replica.
var errShuttingDown = status.Error(codes.Unavailable, "retryd is shutting down; reconnect to another replica")

// feed runs an open Dispatch stream until it ends: it forwards the
// subscription's tasks and, whenever the stream has been idle for a
// heartbeat interval, a heartbeat.
//
// Messages are sent by a goroutine of their own (see sender), so that this
// loop never blocks in Send. A worker that stops reading fills its HTTP/2
// flow-control window, and from then on Send blocks until the stream ends;
// the loop meanwhile takes no further task (tasks claimed for the stream
// wait in its bounded channel and go back to the schedule when the stream
// closes), still ends the stream when the dispatcher stops, and ends it
// itself when one message has been blocked for half the lease left to the
// task it carries (half a lease duration for a heartbeat): the worker is
// not keeping up, and the blocked task can still go back unrun, before the
// reaper would count it as an expired attempt. Tasks that were sent come
// back after their lease, as LeaseExpired attempts (a worker that is only
// slow may still report them, on any connection); nothing is lost.
func (s *retryService) feed(ctx context.Context, stream retrydv1.RetryService_DispatchServer, sub *scheduler.Subscription) error {
	out := s.startSender(ctx, stream, sub)
	defer out.close()
	heartbeat := s.clock.NewTimer(s.heartbeat)
	defer heartbeat.Stop()
	stall := s.clock.NewTimer(time.Hour)
	stopTimer(stall)
	defer stall.Stop()
	for {
		if out.busy {
			select {
			case <-ctx.Done():
				return streamEnded(ctx)
			case <-sub.Ended():
				return errShuttingDown
			case <-stall.Chan():
				return status.Error(codes.ResourceExhausted,
					"the worker is not reading its Dispatch stream (its flow-control window stayed full): stream ended; unsent tasks went back to the schedule, sent ones come back when their lease expires")
			case err := <-out.done:
				out.busy = false
				stopTimer(stall)
				if err != nil {
					return err
				}
				stopTimer(heartbeat)
				heartbeat.Reset(s.heartbeat)
			}
			continue
		}
		select {
		case <-ctx.Done():
			return streamEnded(ctx)
		case <-sub.Ended():
			return errShuttingDown
		case <-heartbeat.Chan():
			out.start(sendJob{msg: &retrydv1.DispatchResponse{Kind: &retrydv1.DispatchResponse_Heartbeat{
				Heartbeat: &retrydv1.Heartbeat{SentAt: timestamppb.New(s.clock.Now())},
			}}})
			stall.Reset(sub.LeaseFor() / 2)
		case t := <-sub.Tasks():
			left := t.LeaseExpiresAt.Sub(s.clock.Now())
			if left <= 0 {
				// It waited in the channel past its lease (the stream was
				// blocked): it was never sent, so it goes back unrun; if the
				// reaper already recorded it as expired, that stands.
				sub.Unsent(t)
				continue
			}
			out.start(sendJob{task: &t})
			stall.Reset(left / 2)
		}
	}
}

// streamEnded is the status of a stream whose context ended: the worker's
// deadline (DEADLINE_EXCEEDED) or its cancellation (CANCELLED). Returning
// nil would send OK trailers, and the server's copy of the deadline can fire
// before the worker's own: the worker would read a clean end of stream.
func streamEnded(ctx context.Context) error {
	return status.FromContextError(ctx.Err()).Err()
}

// stopTimer stops t and drains a tick that fired meanwhile, so that a
// following Reset starts clean.
func stopTimer(t clockwork.Timer) {
	if !t.Stop() {
		select {
		case <-t.Chan():
		default:
		}
	}
}

// sendJob is one message for the sender: a task (sent through send, which
// gives it back when it cannot be sent) or a ready message (a heartbeat).
type sendJob struct {
	task *store.Task
	msg  *retrydv1.DispatchResponse
}

// sender owns a stream's Send calls: one job at a time, its result on done.
// Its goroutine may outlive the handler by the time the ended stream takes
// to unblock a pending Send; Server.Shutdown waits for it (deps.senders)
// before the store is closed, because a task whose Send failed is given
// back to the store.
type sender struct {
	jobs chan sendJob
	done chan error
	busy bool // a job was started and its result not yet read
}

func (s *retryService) startSender(ctx context.Context, stream retrydv1.RetryService_DispatchServer, sub *scheduler.Subscription) *sender {
	out := &sender{jobs: make(chan sendJob), done: make(chan error, 1)}
	s.senders.Add(1)
	go func() {
		defer s.senders.Done()
		for j := range out.jobs {
			var err error
			if j.task != nil {
				err = s.send(ctx, stream, sub, *j.task)
			} else {
				err = stream.Send(j.msg)
			}
			out.done <- err // never blocks: one job at a time, done holds one
		}
	}()
	return out
}

// start hands a job to the idle sender goroutine (it is waiting on jobs).
func (o *sender) start(j sendJob) {
	o.busy = true
	o.jobs <- j
}

// close lets the goroutine end once its current Send returns.
func (o *sender) close() { close(o.jobs) }
