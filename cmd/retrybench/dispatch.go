package main

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
)

// The load generator shares the machine's cores with retryd and Redis, so
// its Dispatch streams do not decode whole messages: a task's payload (a
// google.protobuf.Struct) and labels cost more to decode than anything the
// workload does with the task. A rawCodec hands the stream's messages over
// as bytes, and parseTask reads the four fields the workload needs.

// rawCodec marshals requests as protobuf and leaves responses undecoded,
// in a *rawMessage. Its name keeps the content type application/grpc+proto.
type rawCodec struct{}

// rawMessage is an undecoded message; its buffer is reused.
type rawMessage struct{ b []byte }

func (rawCodec) Marshal(v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return proto.Marshal(m)
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	m, ok := v.(*rawMessage)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	m.b = append(m.b[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// openDispatch opens a Dispatch stream whose responses arrive undecoded.
func openDispatch(ctx context.Context, conn *grpc.ClientConn, req *retrydv1.DispatchRequest) (grpc.ClientStream, error) {
	desc := &retrydv1.RetryService_ServiceDesc.Streams[0]
	stream, err := conn.NewStream(ctx, desc, retrydv1.RetryService_Dispatch_FullMethodName, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		return nil, err
	}
	if err := stream.SendMsg(req); err != nil {
		return nil, err
	}
	if err := stream.CloseSend(); err != nil {
		return nil, err
	}
	return stream, nil
}

// Field numbers of retryd.v1.DispatchResponse, Task and Timestamp.
const (
	fieldResponseTask  protowire.Number = 1
	fieldTaskJobID     protowire.Number = 1
	fieldTaskRetry     protowire.Number = 3
	fieldTaskLeaseID   protowire.Number = 6
	fieldTaskDueAt     protowire.Number = 8
	fieldTimestampSecs protowire.Number = 1
	fieldTimestampNano protowire.Number = 2
)

// wireTask is what the workload reads of a task.
type wireTask struct {
	jobID      string
	retryCount uint32
	leaseID    string
	dueNanos   int64 // Unix ns
}

// parseTask reads a DispatchResponse: ok is false for a heartbeat.
func parseTask(b []byte) (t wireTask, ok bool, err error) {
	var task []byte
	err = eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) {
		if num == fieldResponseTask && typ == protowire.BytesType {
			task, ok = v, true
		}
	})
	if err != nil || !ok {
		return t, false, err
	}
	var due []byte
	err = eachField(task, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) {
		switch {
		case num == fieldTaskJobID && typ == protowire.BytesType:
			t.jobID = string(v)
		case num == fieldTaskRetry && typ == protowire.VarintType:
			t.retryCount = uint32(n)
		case num == fieldTaskLeaseID && typ == protowire.BytesType:
			t.leaseID = string(v)
		case num == fieldTaskDueAt && typ == protowire.BytesType:
			due = v
		}
	})
	if err != nil {
		return t, false, err
	}
	var secs, nanos int64
	err = eachField(due, func(num protowire.Number, typ protowire.Type, _ []byte, n uint64) {
		switch {
		case num == fieldTimestampSecs && typ == protowire.VarintType:
			secs = int64(n)
		case num == fieldTimestampNano && typ == protowire.VarintType:
			nanos = int64(int32(n))
		}
	})
	t.dueNanos = secs*1e9 + nanos
	return t, true, err
}

// eachField calls fn for each field of a message: bytes fields with their
// contents, varints with their value.
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, bytes []byte, varint uint64)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch typ {
		case protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return protowire.ParseError(m)
			}
			fn(num, typ, v, 0)
			b = b[m:]
		case protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return protowire.ParseError(m)
			}
			fn(num, typ, nil, v)
			b = b[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return protowire.ParseError(m)
			}
			b = b[m:]
		}
	}
	return nil
}
