package policy

import (
	"fmt"
	"strings"
	"time"
)

// Window is a weekly reboot window: on each of Days, from Start to End, wall-clock
// time in TimeZone. An End at or before Start ends on the next day, so a window can
// cross midnight; it then belongs to the day it starts on.
type Window struct {
	// Days are the weekdays the window starts on, as Mon, Tue ... Sun (case ignored).
	// Empty: every day.
	Days []string `json:"days,omitempty"`
	// Start and End are "HH:MM" (24-hour clock).
	Start string `json:"start"`
	End   string `json:"end"`
	// TimeZone is an IANA time zone name, such as Europe/Berlin. Default UTC.
	TimeZone string `json:"timeZone,omitempty"`

	days       [7]bool
	start, end time.Duration // since midnight
	loc        *time.Location
}

var weekdays = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// compile checks the window and prepares it; errors name the field.
func (w *Window) compile() error {
	var err error
	if w.start, err = clock(w.Start); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	if w.end, err = clock(w.End); err != nil {
		return fmt.Errorf("end: %w", err)
	}
	if w.start == w.end {
		return fmt.Errorf("start, end: both %s, an empty window (for no restriction, leave windows out)", w.Start)
	}
	w.loc = time.UTC
	if w.TimeZone != "" {
		if w.loc, err = time.LoadLocation(w.TimeZone); err != nil {
			return fmt.Errorf("timeZone: unknown time zone %q", w.TimeZone)
		}
	}
	w.days = [7]bool{}
	if len(w.Days) == 0 {
		w.days = [7]bool{true, true, true, true, true, true, true}
	}
	for i, d := range w.Days {
		wd, ok := weekdays[strings.ToLower(d)]
		if !ok {
			return fmt.Errorf("days[%d]: %q is not one of Mon, Tue, Wed, Thu, Fri, Sat, Sun", i, d)
		}
		w.days[wd] = true
	}
	return nil
}

// clock parses "HH:MM" into the time since midnight.
func clock(s string) (time.Duration, error) {
	t, err := time.Parse("15:04", s)
	if err != nil || len(s) != 5 {
		return 0, fmt.Errorf("%q is not a time of day as HH:MM", s)
	}
	return time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute, nil
}

// open reports whether t falls in the window. The weekday and the wall-clock time are
// read off the instant in the window's zone: a day may have no local midnight (Santiago
// and Havana skip 00:00 to 01:00 on their spring day), so nothing is derived from one.
func (w *Window) open(t time.Time) bool {
	t = t.In(w.loc)
	// Wall-clock time of day, so that DST days keep their HH:MM meaning.
	tod := time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute +
		time.Duration(t.Second())*time.Second + time.Duration(t.Nanosecond())
	today := t.Weekday()
	yesterday := (today + 6) % 7
	if w.start < w.end {
		return w.days[today] && tod >= w.start && tod < w.end
	}
	// Crosses midnight: the part after Start today, or the part before End of a
	// window that started yesterday.
	return w.days[today] && tod >= w.start || w.days[yesterday] && tod < w.end
}

// String is the window as an operator wrote it.
func (w *Window) String() string {
	days := "every day"
	if len(w.Days) > 0 {
		days = strings.Join(w.Days, ",")
	}
	tz := w.TimeZone
	if tz == "" {
		tz = "UTC"
	}
	return fmt.Sprintf("%s %s-%s %s", days, w.Start, w.End, tz)
}
