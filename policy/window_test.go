package policy

import (
	"archive/zip"
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // the zones the property test walks, whatever the host has

	"github.com/stretchr/testify/require"
)

// The failing input of issue 15 (Zincati#301's class): on 2026-09-06 Santiago's
// clocks jump from 00:00 to 01:00, so that day has no local midnight. 06:00Z is
// Sunday 03:00 there: inside a Sunday 01:00-05:00 window, outside a Saturday one.
func TestWindowOnADayWithoutMidnight(t *testing.T) {
	at := time.Date(2026, 9, 6, 6, 0, 0, 0, time.UTC)
	sun := mustWindow(t, []string{"Sun"}, "01:00", "05:00", "America/Santiago")
	sat := mustWindow(t, []string{"Sat"}, "01:00", "05:00", "America/Santiago")
	require.True(t, sun.open(at), "Sunday 03:00 in Santiago is in the Sunday window")
	require.False(t, sat.open(at), "Sunday 03:00 in Santiago is not in a Saturday window")
}

func mustWindow(t testing.TB, days []string, start, end, tz string) *Window {
	t.Helper()
	w := &Window{Days: days, Start: start, End: end, TimeZone: tz}
	require.NoError(t, w.compile())
	return w
}

// referenceOpen is the window check written as plainly as possible: the weekday and
// the wall-clock time are read off the instant in the zone, as a person reading a
// wall clock and a calendar there would, and compared as "HH:MM:SS" strings.
func referenceOpen(w *Window, t time.Time) bool {
	local := t.In(w.loc)
	day := strings.ToLower(local.Format("Mon"))
	prev := strings.ToLower(((local.Weekday() + 6) % 7).String()[:3]) // the weekday before
	hms := local.Format("15:04:05")
	on := func(d string) bool {
		if len(w.Days) == 0 {
			return true
		}
		for _, x := range w.Days {
			if strings.ToLower(x) == d {
				return true
			}
		}
		return false
	}
	start, end := w.Start+":00", w.End+":00"
	if start < end {
		return on(day) && hms >= start && hms < end
	}
	return on(day) && hms >= start || on(prev) && hms < end
}

// zoneNames lists every zone of the tzdata Go embeds (time/tzdata is built from
// $GOROOT/lib/time/zoneinfo.zip).
func zoneNames(t testing.TB) []string {
	t.Helper()
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	require.NoError(t, err, "go env GOROOT")
	r, err := zip.OpenReader(filepath.Join(strings.TrimSpace(string(goroot)), "lib", "time", "zoneinfo.zip"))
	require.NoError(t, err, "the zones Go embeds (time/tzdata) are read from GOROOT's lib/time/zoneinfo.zip")
	defer r.Close()
	var names []string
	for _, f := range r.File {
		if !strings.HasSuffix(f.Name, "/") {
			names = append(names, f.Name)
		}
	}
	sort.Strings(names)
	return names
}

// propertyWindows are the shapes the property test checks in every zone: across
// midnight, on the hours DST moves (00:00-01:00, 01:00-03:00), half hours (for the
// 30-minute shifts of Lord Howe Island), every day, and single days.
var propertyWindows = []struct {
	days       []string
	start, end string
}{
	{[]string{"Sun"}, "01:00", "05:00"},
	{[]string{"Sat"}, "01:00", "05:00"},
	{[]string{"Sat"}, "23:00", "02:00"},
	{[]string{"Sun"}, "00:00", "01:00"},
	{nil, "02:00", "03:00"},
	{nil, "22:00", "06:00"},
	{[]string{"Mon", "Fri"}, "00:30", "02:30"},
	{[]string{"Tue", "Wed", "Thu"}, "01:30", "00:30"},
}

// For every zone of the embedded tzdata, every hour of 2026 and every 10 minutes
// within three hours of each of that year's offset changes, the window check agrees
// with referenceOpen for every window shape. Zones whose offsets change at the same
// instants to the same values (links, and zones that agree all year) behave alike,
// so one of each kind is walked.
func TestWindowMatchesReferenceInEveryZone(t *testing.T) {
	zones := zoneNames(t)
	require.Greater(t, len(zones), 300, "the embedded tzdata")
	from := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	to := from.AddDate(1, 0, 0)
	seen := map[string]bool{}
	checked, transitions, walked := 0, 0, 0
	for _, zone := range zones {
		loc, err := time.LoadLocation(zone)
		require.NoError(t, err, zone)
		changes := offsetChanges(loc, from, to)
		if key := fmt.Sprint(changes); seen[key] {
			continue
		} else {
			seen[key] = true
		}
		walked++
		ws := make([]*Window, len(propertyWindows))
		for i, pw := range propertyWindows {
			ws[i] = mustWindow(t, pw.days, pw.start, pw.end, zone)
		}
		check := func(at time.Time) {
			for _, w := range ws {
				if got, want := w.open(at), referenceOpen(w, at); got != want {
					t.Fatalf("%s at %s (%s local): open=%v, reference %v", w, at.Format(time.RFC3339),
						at.In(loc).Format("Mon 2006-01-02 15:04:05 MST"), got, want)
				}
			}
			checked++
		}
		for at := from; at.Before(to); at = at.Add(time.Hour) {
			check(at)
		}
		for _, c := range changes[1:] {
			transitions++
			for near := c.at.Add(-3 * time.Hour); near.Before(c.at.Add(3 * time.Hour)); near = near.Add(10 * time.Minute) {
				check(near)
			}
		}
	}
	t.Logf("%d zones, %d of distinct offsets walked, %d instants, %d offset changes", len(zones), walked, checked, transitions)
}

type offsetChange struct {
	at     time.Time // when the new offset begins
	offset int       // seconds east of UTC
}

// offsetChanges returns the zone's offset at from and each change of it until to, at
// the instants the tzdata gives (time.Time.ZoneBounds).
func offsetChanges(loc *time.Location, from, to time.Time) []offsetChange {
	_, off := from.In(loc).Zone()
	out := []offsetChange{{from, off}}
	for at := from; at.Before(to); {
		_, end := at.In(loc).ZoneBounds()
		if end.IsZero() {
			break // no more changes
		}
		if _, o := end.In(loc).Zone(); o != off {
			off = o
			out = append(out, offsetChange{end.UTC(), o})
		}
		at = end
	}
	return out
}

func ExampleGroup_WindowOpen() {
	c, err := Parse([]byte("groups: {workers: {windows: [{days: [Sun], start: '01:00', end: '05:00', timeZone: America/Santiago}]}}"))
	if err != nil {
		panic(err)
	}
	// Sunday 03:00 in Santiago, on the day its clocks skip midnight.
	fmt.Println(c.Group("workers").WindowOpen(time.Date(2026, 9, 6, 6, 0, 0, 0, time.UTC)))
	// Output: true
}
