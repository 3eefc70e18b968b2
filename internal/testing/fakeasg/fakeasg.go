// Package fakeasg is an in-process fake of the AWS Auto Scaling Query API, enough of it
// for reboot-manager's replacement of failed nodes: DescribeAutoScalingInstances,
// DescribeAutoScalingGroups and TerminateInstanceInAutoScalingGroup, spoken as AWS
// speaks them (form-encoded POSTs, XML replies, XML error documents with codes), so
// that tests drive the real SDK client through its BaseEndpoint.
package fakeasg

import (
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"sync"
	"time"
)

// Instance is an instance of a group.
type Instance struct {
	ID    string
	Zone  string
	State string // LifecycleState: InService, Terminating, Terminated, ...
}

// Group is an Auto Scaling group.
type Group struct {
	Name      string
	Instances []*Instance
	// Suspended are suspended processes, such as Launch.
	Suspended []string
	Tags      map[string]string
	Desired   int
}

// Fake is the fake API. Its zero value is not usable: use New.
type Fake struct {
	mu     sync.Mutex
	groups map[string]*Group
	calls  []string  // actions, in order
	fail   []failure // queued failures
	// OnTerminate, if set, runs (without the lock held) after an instance is set
	// Terminating (not again for an instance already Terminating): a test launches
	// the replacement there.
	OnTerminate func(group, instance string)
	// OnCall, if set, runs (without the lock held) when a call arrives, before it is
	// answered: a test changes the world there while the caller waits.
	OnCall func(action string)
	server *httptest.Server
}

type failure struct {
	action, code, message string
	status                int
}

// New starts a fake on a loopback port; Close it.
func New() *Fake {
	f := &Fake{groups: map[string]*Group{}}
	f.server = httptest.NewServer(http.HandlerFunc(f.serve))
	return f
}

// URL is the endpoint to give the SDK as BaseEndpoint.
func (f *Fake) URL() string { return f.server.URL }

// Close stops the server.
func (f *Fake) Close() { f.server.Close() }

// SetOnCall sets OnCall while the fake serves.
func (f *Fake) SetOnCall(hook func(action string)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.OnCall = hook
}

// AddGroup adds a group.
func (f *Fake) AddGroup(g *Group) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.groups[g.Name] = g
}

// AddInstance adds an InService instance to a group, as a launch would.
func (f *Fake) AddInstance(group, id, zone string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.groups[group].Instances = append(f.groups[group].Instances, &Instance{ID: id, Zone: zone, State: "InService"})
}

// Suspend suspends (or with resume, resumes) a process of a group.
func (f *Fake) Suspend(group, process string, resume bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := f.groups[group]
	g.Suspended = slices.DeleteFunc(g.Suspended, func(p string) bool { return p == process })
	if !resume {
		g.Suspended = append(g.Suspended, process)
	}
}

// FailNext makes the next call of action fail with an AWS error code.
func (f *Fake) FailNext(action, code, message string, status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = append(f.fail, failure{action, code, message, status})
}

// Calls returns the actions called so far, in order.
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// Count returns how many times action was called.
func (f *Fake) Count(action string) int {
	n := 0
	for _, c := range f.Calls() {
		if c == action {
			n++
		}
	}
	return n
}

// InstanceState returns an instance's lifecycle state, "" if unknown.
func (f *Fake) InstanceState(id string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, in := f.find(id); in != nil {
		return in.State
	}
	return ""
}

func (f *Fake) find(id string) (*Group, *Instance) {
	for _, g := range f.groups {
		for _, in := range g.Instances {
			if in.ID == id {
				return g, in
			}
		}
	}
	return nil, nil
}

const xmlns = "http://autoscaling.amazonaws.com/doc/2011-01-01/"

func (f *Fake) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.ParseForm() != nil {
		writeError(w, http.StatusBadRequest, "InvalidAction", "want a form-encoded POST")
		return
	}
	action := r.PostForm.Get("Action")
	if r.PostForm.Get("Version") != "2011-01-01" {
		writeError(w, http.StatusBadRequest, "InvalidAction", "unknown Version "+r.PostForm.Get("Version"))
		return
	}
	f.mu.Lock()
	onCall := f.OnCall
	f.mu.Unlock()
	if onCall != nil {
		onCall(action)
	}
	var onTerminate func()
	f.mu.Lock()
	f.calls = append(f.calls, action)
	var reply any
	var status int
	var code, message string
	if i := slices.IndexFunc(f.fail, func(x failure) bool { return x.action == action }); i >= 0 {
		status, code, message = f.fail[i].status, f.fail[i].code, f.fail[i].message
		f.fail = slices.Delete(f.fail, i, i+1)
	} else {
		switch action {
		case "DescribeAutoScalingInstances":
			reply = f.describeInstances(members(r, "InstanceIds"))
		case "DescribeAutoScalingGroups":
			reply = f.describeGroups(members(r, "AutoScalingGroupNames"))
		case "TerminateInstanceInAutoScalingGroup":
			reply, code, message, onTerminate = f.terminate(r.PostForm.Get("InstanceId"), r.PostForm.Get("ShouldDecrementDesiredCapacity"))
			status = http.StatusBadRequest
		default:
			status, code, message = http.StatusBadRequest, "InvalidAction", "unknown action "+action
		}
	}
	f.mu.Unlock()
	if code != "" {
		writeError(w, status, code, message)
		return
	}
	w.Header().Set("Content-Type", "text/xml")
	_, _ = w.Write([]byte(xml.Header))
	_ = xml.NewEncoder(w).Encode(reply)
	if onTerminate != nil {
		onTerminate()
	}
}

// members reads a Query list parameter: name.member.1, name.member.2, ...
func members(r *http.Request, name string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := r.PostForm[fmt.Sprintf("%s.member.%d", name, i)]
		if !ok {
			return out
		}
		out = append(out, v[0])
	}
}

type responseMetadata struct {
	RequestID string `xml:"RequestId"`
}

type instanceDetails struct {
	InstanceID           string `xml:"InstanceId"`
	AutoScalingGroupName string
	AvailabilityZone     string
	LifecycleState       string
	HealthStatus         string
	ProtectedFromScaleIn bool
}

func (f *Fake) describeInstances(ids []string) any {
	type result struct {
		Members []instanceDetails `xml:"AutoScalingInstances>member"`
	}
	type response struct {
		XMLName  xml.Name         `xml:"DescribeAutoScalingInstancesResponse"`
		Xmlns    string           `xml:"xmlns,attr"`
		Result   result           `xml:"DescribeAutoScalingInstancesResult"`
		Metadata responseMetadata `xml:"ResponseMetadata"`
	}
	out := response{Xmlns: xmlns, Metadata: responseMetadata{"fake"}}
	for _, id := range ids {
		if g, in := f.find(id); in != nil && in.State != "Terminated" {
			out.Result.Members = append(out.Result.Members, instanceDetails{
				InstanceID: in.ID, AutoScalingGroupName: g.Name, AvailabilityZone: in.Zone,
				LifecycleState: in.State, HealthStatus: "HEALTHY",
			})
		}
	}
	return out
}

func (f *Fake) describeGroups(names []string) any {
	type instance struct {
		InstanceID       string `xml:"InstanceId"`
		AvailabilityZone string
		LifecycleState   string
		HealthStatus     string
	}
	type process struct {
		ProcessName      string
		SuspensionReason string
	}
	type tag struct {
		Key, Value, ResourceID, ResourceType string
		PropagateAtLaunch                    bool
	}
	type group struct {
		AutoScalingGroupName string
		MinSize              int
		MaxSize              int
		DesiredCapacity      int
		CreatedTime          string
		Instances            []instance `xml:"Instances>member"`
		SuspendedProcesses   []process  `xml:"SuspendedProcesses>member"`
		Tags                 []tag      `xml:"Tags>member"`
	}
	type response struct {
		XMLName  xml.Name         `xml:"DescribeAutoScalingGroupsResponse"`
		Xmlns    string           `xml:"xmlns,attr"`
		Groups   []group          `xml:"DescribeAutoScalingGroupsResult>AutoScalingGroups>member"`
		Metadata responseMetadata `xml:"ResponseMetadata"`
	}
	out := response{Xmlns: xmlns, Metadata: responseMetadata{"fake"}}
	for _, name := range names {
		g := f.groups[name]
		if g == nil {
			continue
		}
		og := group{AutoScalingGroupName: g.Name, MaxSize: 100, DesiredCapacity: g.Desired,
			CreatedTime: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Format(time.RFC3339)}
		for _, in := range g.Instances {
			if in.State != "Terminated" {
				og.Instances = append(og.Instances, instance{in.ID, in.Zone, in.State, "HEALTHY"})
			}
		}
		for _, p := range g.Suspended {
			og.SuspendedProcesses = append(og.SuspendedProcesses, process{p, "User suspended"})
		}
		keys := make([]string, 0, len(g.Tags))
		for k := range g.Tags {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			og.Tags = append(og.Tags, tag{k, g.Tags[k], g.Name, "auto-scaling-group", false})
		}
		out.Groups = append(out.Groups, og)
	}
	return out
}

func (f *Fake) terminate(id, decrement string) (reply any, code, message string, after func()) {
	g, in := f.find(id)
	if in == nil || in.State == "Terminated" {
		return nil, "ValidationError", "Instance Id not found - No managed instance found for instance ID: " + id, nil
	}
	if decrement != "false" && decrement != "true" {
		return nil, "ValidationError", "ShouldDecrementDesiredCapacity is required", nil
	}
	again := in.State == "Terminating" // terminating it again: no new launch
	in.State = "Terminating"
	if decrement == "true" && !again {
		g.Desired--
	}
	type activity struct {
		ActivityID           string `xml:"ActivityId"`
		AutoScalingGroupName string
		Cause                string
		Description          string
		StartTime            string
		StatusCode           string
		Progress             int
	}
	type response struct {
		XMLName  xml.Name         `xml:"TerminateInstanceInAutoScalingGroupResponse"`
		Xmlns    string           `xml:"xmlns,attr"`
		Activity activity         `xml:"TerminateInstanceInAutoScalingGroupResult>Activity"`
		Metadata responseMetadata `xml:"ResponseMetadata"`
	}
	if hook := f.OnTerminate; hook != nil && !again {
		group := g.Name
		after = func() { hook(group, id) }
	}
	return response{Xmlns: xmlns, Metadata: responseMetadata{"fake"}, Activity: activity{
		ActivityID: "act-" + id, AutoScalingGroupName: g.Name, Cause: "terminated by reboot-manager",
		Description: "Terminating EC2 instance: " + id, StartTime: time.Now().UTC().Format(time.RFC3339),
		StatusCode: "InProgress", Progress: 0,
	}}, "", "", after
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	type errorResponse struct {
		XMLName xml.Name `xml:"ErrorResponse"`
		Xmlns   string   `xml:"xmlns,attr"`
		Error   struct {
			Type    string
			Code    string
			Message string
		}
		RequestID string `xml:"RequestId"`
	}
	e := errorResponse{Xmlns: xmlns, RequestID: "fake"}
	e.Error.Type, e.Error.Code, e.Error.Message = "Sender", code, message
	if status >= 500 {
		e.Error.Type = "Receiver"
	}
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(xml.Header))
	_ = xml.NewEncoder(w).Encode(e)
}
