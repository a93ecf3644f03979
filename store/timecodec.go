package store

import "time"

// DueMicros encodes a due time as Unix microseconds, rounded up, and
// NowMicros encodes "now" rounded down. Comparing DueMicros(due) <=
// NowMicros(now) can therefore never hand out an attempt before it is due:
// both backends order and compare times in these units.
func DueMicros(t time.Time) int64 {
	us := t.UnixMicro()
	if time.UnixMicro(us).Before(t) {
		us++
	}
	return us
}

// NowMicros encodes now as Unix microseconds, rounded down.
func NowMicros(t time.Time) int64 { return t.UnixMicro() }

// FromMicros decodes Unix microseconds; 0 is the zero time.
func FromMicros(us int64) time.Time {
	if us == 0 {
		return time.Time{}
	}
	return time.UnixMicro(us).UTC()
}
