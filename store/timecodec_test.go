package store

import (
	"testing"
	"time"
)

func TestDueNeverBeforeNow(t *testing.T) {
	t.Parallel()
	base := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	for _, ns := range []int64{0, 1, 999, 1000, 1001, 1999, 123456789} {
		due := base.Add(time.Duration(ns))
		if got := FromMicros(DueMicros(due)); got.Before(due) {
			t.Errorf("DueMicros(%v) decodes to %v, before the due time", due, got)
		}
		if got := FromMicros(NowMicros(due)); got.After(due) {
			t.Errorf("NowMicros(%v) decodes to %v, after now", due, got)
		}
	}
	if !FromMicros(0).IsZero() {
		t.Error("FromMicros(0) should be the zero time")
	}
}
