package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"

	"github.com/reboot-manager/reboot-manager/access"
	"github.com/reboot-manager/reboot-manager/fleetlock"
	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
	"github.com/reboot-manager/reboot-manager/internal/testing/fleetsim"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/lock/locktest"
)

// The idle benchmark: a fleet's no-op steady-state check-ins (nodes that hold
// nothing), answered by the reboot-manager binary from its node cache, against a
// server that does nothing but answer the same route with the same bytes. Both run in
// their own process, the load generator in a third: this binary run again with
// idleRoleEnv set. The no-op server is measured before and after the real one, to see
// the machine drift.

// idleRoleEnv, when set, makes this binary a helper process of the idle benchmark:
// "noop-server" or "load".
const idleRoleEnv = "REBOOT_MANAGER_BENCH_ROLE"

func init() {
	role := os.Getenv(idleRoleEnv)
	if role == "" {
		return
	}
	var err error
	switch role {
	case "noop-server":
		err = runNoopServer(os.Args[1:])
	case "load":
		err = runLoad(os.Args[1:])
	default:
		err = fmt.Errorf("unknown %s %q", idleRoleEnv, role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// idleConfig is the idle benchmark's part of the flags.
type idleConfig struct {
	clients    int
	rounds     int
	duration   time.Duration
	warmup     time.Duration
	cpuProfile string
}

func (c *idleConfig) flags(fs *flag.FlagSet) {
	fs.IntVar(&c.clients, "idle-clients", 32, "idle: concurrent clients (keep-alive connections) of the load generator")
	fs.IntVar(&c.rounds, "idle-rounds", 3, "idle: how many times the binary is measured, each time between two no-op runs")
	fs.DurationVar(&c.duration, "idle-duration", 10*time.Second, "idle: how long each run is measured, saturated")
	fs.DurationVar(&c.warmup, "idle-warmup", 2*time.Second, "idle: load sent to each server before it is measured")
	fs.StringVar(&c.cpuProfile, "idle-cpuprofile", "", "idle: also serve the same load from an in-process copy of the binary's handler chain "+
		"(fleetlock.NewHandler over access.Guard over *lock.Lock) and write its CPU profile to this file")
}

// idleRun is what the load generator measured against one server.
type idleRun struct {
	Server    string          `json:"-"`
	Checkins  int             `json:"checkins"`
	All       int             `json:"all"` // with the warm-up's
	CPU       time.Duration   `json:"-"`   // the server process's, warm-up included
	Failures  int             `json:"failures"`
	Seconds   float64         `json:"seconds"`
	Quantiles []time.Duration `json:"quantiles"` // at idleQuantiles
}

var idleQuantiles = []float64{0.5, 0.9, 0.99, 0.999, 1}

func (r idleRun) rate() float64 { return float64(r.Checkins) / r.Seconds }

// cpuPer is the server's CPU time per check-in, or 0 if unknown.
func (r idleRun) cpuPer() time.Duration {
	if r.CPU <= 0 || r.All == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.All)
}

// idleResult is the idle benchmark's outcome.
type idleResult struct {
	nodes, clients int
	duration       time.Duration
	reply          string
	runs           []idleRun // no-op, then real and no-op for each round[, in-process]
	rounds         int
	// realAPIRequests are the binary's API requests during the runs, from the
	// API server's audit log, by verb and path, health probes left out.
	realAPIRequests map[string]int
}

// ratios are, for each round, the real server's throughput over the mean of the
// no-op runs around it, and its CPU per check-in over theirs.
func (r idleResult) ratios() (rate, cpu []float64) {
	for i := 1; i+1 < len(r.runs) && i < 2*r.rounds; i += 2 {
		before, real, after := r.runs[i-1], r.runs[i], r.runs[i+1]
		rate = append(rate, real.rate()/((before.rate()+after.rate())/2))
		if c := (before.cpuPer() + after.cpuPer()) / 2; c > 0 && real.cpuPer() > 0 {
			cpu = append(cpu, float64(real.cpuPer())/float64(c))
		}
	}
	return rate, cpu
}

// ratio is the median of the rounds' throughput ratios.
func (r idleResult) ratio() float64 {
	rate, _ := r.ratios()
	return median(rate)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func (r idleResult) apiRequests() int {
	n := 0
	for _, v := range r.realAPIRequests {
		n += v
	}
	return n
}

// benchIdle runs the idle benchmark over the nodes of s, which hold nothing.
func benchIdle(ctx context.Context, env *controlplane.Env, bin string, s *nodeSet, c idleConfig) (idleResult, error) {
	c.rounds = max(1, c.rounds)
	res := idleResult{nodes: len(s.names), clients: c.clients, duration: c.duration, rounds: c.rounds}
	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	dir, err := os.MkdirTemp("", "reboot-manager-idle-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	if bin == "" {
		if bin, err = fleetsim.BuildServer(dir); err != nil {
			return res, err
		}
	}
	ids := filepath.Join(dir, "ids")
	if err := os.WriteFile(ids, []byte(strings.Join(s.ids, "\n")+"\n"), 0o600); err != nil {
		return res, err
	}

	// The binary as deployed: default flags, info-level JSON logs.
	logs := &fleetsim.LogBuffer{}
	real, err := fleetsim.StartServer(bin, env.Kubeconfig, logs)
	if err != nil {
		return res, err
	}
	defer func() { _ = real.Stop() }()
	status, hdr, reply, err := idleProbe(real.FleetLock, s.ids[0])
	if err != nil {
		return res, err
	}
	if status != http.StatusOK || !strings.Contains(string(reply), string(fleetlock.KindLockNotHeld)) {
		return res, fmt.Errorf("reboot-manager answered a no-op steady-state %d %q", status, reply)
	}
	res.reply = string(reply)

	noop, noopURL, err := startNoopServer(ctx, self, reply)
	if err != nil {
		return res, err
	}
	defer func() { _ = noop.Process.Kill(); _ = noop.Wait() }()
	nstatus, nhdr, nreply, err := idleProbe(noopURL, s.ids[0])
	if err != nil {
		return res, err
	}
	if nstatus != status || !bytes.Equal(nreply, reply) || nhdr.Get("Content-Type") != hdr.Get("Content-Type") ||
		nhdr.Get("Cache-Control") != hdr.Get("Cache-Control") {
		return res, fmt.Errorf("the no-op server answers %d %v %q, reboot-manager %d %v %q", nstatus, nhdr, nreply, status, hdr, reply)
	}

	auditFrom := fileSize(env.AuditLog)
	noopCPU := func() (time.Duration, error) { return processCPU(noop.Process.Pid) }
	realCPU := func() (time.Duration, error) { return metricsCPU(real) }
	for i := range 2*c.rounds + 1 {
		name, url, cpu := fmt.Sprintf("no-op server %d", i/2+1), noopURL, noopCPU
		if i%2 == 1 {
			name, url, cpu = fmt.Sprintf("reboot-manager %d", i/2+1), real.FleetLock, realCPU
		}
		cpu0, err := cpu()
		if err != nil {
			return res, err
		}
		r, err := runLoadProcess(ctx, self, url, ids, c)
		if err != nil {
			return res, fmt.Errorf("load on the %s: %w", name, err)
		}
		cpu1, err := cpu()
		if err != nil {
			return res, err
		}
		r.Server, r.CPU = name, cpu1-cpu0
		res.runs = append(res.runs, r)
	}
	time.Sleep(time.Second) // the audit log's last lines
	if res.realAPIRequests, err = auditedRequests(env.AuditLog, auditFrom, "reboot-manager/"); err != nil {
		return res, err
	}

	if c.cpuProfile != "" {
		r, err := idleInProcess(ctx, env, self, ids, c)
		if err != nil {
			return res, err
		}
		res.runs = append(res.runs, r)
	}
	return res, nil
}

// idleInProcess serves the binary's handler chain from this process (fleetlock
// handler with metrics and an info-level JSON logger, over access.Guard, over a
// *lock.Lock on the control plane) and profiles it under the same load.
func idleInProcess(ctx context.Context, env *controlplane.Env, self, ids string, c idleConfig) (idleRun, error) {
	client, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		return idleRun{}, err
	}
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	log := jsonLogger(io.Discard)
	l, err := lock.New(client, &locktest.Drained{}, lock.Options{Logger: log})
	if err != nil {
		return idleRun{}, err
	}
	if err := l.Start(lctx); err != nil {
		return idleRun{}, err
	}
	reg := prometheus.NewRegistry()
	guard := access.NewGuard(l, access.Options{Logger: log})
	reg.MustRegister(l, guard)
	h := fleetlock.NewHandler(guard, fleetlock.Options{Logger: log, Registerer: reg})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return idleRun{}, err
	}
	srv := newIdleServer(h)
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	f, err := os.Create(c.cpuProfile)
	if err != nil {
		return idleRun{}, err
	}
	defer f.Close()
	// The warm-up is not profiled: the load process starts measuring after it.
	warm := c
	warm.duration, warm.warmup = c.warmup, 0
	if _, err := runLoadProcess(ctx, self, "http://"+ln.Addr().String()+"/", ids, warm); err != nil {
		return idleRun{}, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		return idleRun{}, err
	}
	c.warmup = 0
	r, err := runLoadProcess(ctx, self, "http://"+ln.Addr().String()+"/", ids, c)
	pprof.StopCPUProfile()
	r.Server = "in-process copy (profiled)"
	return r, err
}

func jsonLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// newIdleServer is an HTTP server set as cmd/reboot-manager sets its FleetLock
// server (timeouts, header limit), so that both servers pay for the same.
func newIdleServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      3 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
	}
}

// idleBody is a steady-state body byte for byte as Zincati sends it.
func idleBody(id string) []byte {
	return []byte("{\n  \"client_params\": {\n    \"id\": \"" + id + "\",\n    \"group\": \"default\"\n  }\n}")
}

// idleRequest builds a steady-state request with Zincati's headers.
func idleRequest(base string, body []byte) (*http.Request, error) {
	req, err := http.NewRequest(http.MethodPost, strings.TrimSuffix(base, "/")+"/v1/steady-state", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header[fleetlock.ProtocolHeader] = []string{"true"}
	req.Header["accept"] = []string{"*/*"}
	req.Header["content-type"] = []string{"application/json"}
	req.Header.Set("User-Agent", "")
	return req, nil
}

// idleProbe sends one steady-state for id to base and returns the reply.
func idleProbe(base, id string) (int, http.Header, []byte, error) {
	req, err := idleRequest(base, idleBody(id))
	if err != nil {
		return 0, nil, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b, err
}

// processCPU is the user and system CPU time process pid has used, from /proc.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command, which is in parentheses: utime and stime are the
	// 12th and 13th, in clock ticks (100 a second on Linux).
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0, fmt.Errorf("cannot read /proc/%d/stat", pid)
	}
	var utime, stime int64
	if _, err := fmt.Sscan(f[11]+" "+f[12], &utime, &stime); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * (time.Second / 100), nil
}

// metricsCPU is process_cpu_seconds_total of a reboot-manager, from its /metrics.
func metricsCPU(s *fleetsim.Server) (time.Duration, error) {
	text, err := s.Metrics()
	if err != nil {
		return 0, err
	}
	for l := range strings.SplitSeq(text, "\n") {
		if v, ok := strings.CutPrefix(l, "process_cpu_seconds_total "); ok {
			var sec float64
			if _, err := fmt.Sscan(v, &sec); err != nil {
				return 0, err
			}
			return time.Duration(sec * float64(time.Second)), nil
		}
	}
	return 0, fmt.Errorf("reboot-manager /metrics has no process_cpu_seconds_total")
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// auditedRequests counts the API requests in the API server's audit log past offset
// from clients whose user agent starts with agent, by verb and path, leaving out the
// health probes (/readyz, /healthz, /livez), which are periodic.
func auditedRequests(path string, offset int64, agent string) (map[string]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	counts := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var e struct {
			AuditID, Verb, RequestURI, UserAgent string
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil || !strings.HasPrefix(e.UserAgent, agent) || seen[e.AuditID] {
			continue
		}
		seen[e.AuditID] = true
		p, _, _ := strings.Cut(e.RequestURI, "?")
		if p == "/readyz" || p == "/healthz" || p == "/livez" {
			continue
		}
		counts[e.Verb+" "+p]++
	}
	return counts, sc.Err()
}

// startNoopServer starts this binary as the no-op server and returns its base URL.
func startNoopServer(ctx context.Context, self string, reply []byte) (*exec.Cmd, string, error) {
	cmd := exec.CommandContext(ctx, self, "-reply="+base64.StdEncoding.EncodeToString(reply))
	cmd.Env = append(os.Environ(), idleRoleEnv+"=noop-server")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, "", fmt.Errorf("no-op server: %w", err)
	}
	return cmd, "http://" + strings.TrimSpace(line) + "/", nil
}

// runNoopServer is the no-op server process: it answers POST /v1/steady-state with
// the reply bytes and the headers reboot-manager sends, reading the body and nothing
// else, in an HTTP server set as reboot-manager's. It prints its address, then serves
// until killed.
func runNoopServer(args []string) error {
	fs := flag.NewFlagSet("noop-server", flag.ContinueOnError)
	replyB64 := fs.String("reply", "", "the reply body, base64")
	if err := fs.Parse(args); err != nil {
		return err
	}
	reply, err := base64.StdEncoding.DecodeString(*replyB64)
	if err != nil {
		return err
	}
	contentType, cacheControl := []string{"application/json"}, []string{"no-store"}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/steady-state", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		h := w.Header()
		h["Content-Type"] = contentType
		h["Cache-Control"] = cacheControl
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(reply)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
	return newIdleServer(mux).Serve(ln)
}

// runLoadProcess runs this binary as the load generator against base and returns
// what it measured.
func runLoadProcess(ctx context.Context, self, base, ids string, c idleConfig) (idleRun, error) {
	var r idleRun
	cmd := exec.CommandContext(ctx, self, "-url="+base, "-ids="+ids, fmt.Sprint("-clients=", c.clients),
		"-duration="+c.duration.String(), "-warmup="+c.warmup.String())
	cmd.Env = append(os.Environ(), idleRoleEnv+"=load")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.Output()
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal(out, &r)
}

// runLoad is the load generator process: clients keep-alive connections each send
// steady-state for random IDs as fast as they are answered, for warmup and then for
// duration, which is measured. It prints an idleRun as JSON.
func runLoad(args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	base := fs.String("url", "", "the server's base URL")
	idsFile := fs.String("ids", "", "file of Zincati IDs, one a line")
	clients := fs.Int("clients", 32, "concurrent clients")
	duration := fs.Duration("duration", 10*time.Second, "measured time")
	warmup := fs.Duration("warmup", 2*time.Second, "unmeasured time before")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b, err := os.ReadFile(*idsFile)
	if err != nil {
		return err
	}
	var bodies [][]byte
	for id := range strings.FieldsSeq(string(b)) {
		bodies = append(bodies, idleBody(id))
	}
	if len(bodies) == 0 {
		return fmt.Errorf("no IDs in %s", *idsFile)
	}
	hc := &http.Client{Transport: &http.Transport{
		MaxIdleConns: *clients, MaxIdleConnsPerHost: *clients, MaxConnsPerHost: *clients, DisableCompression: true,
	}}
	start := time.Now()
	measureFrom := start.Add(*warmup)
	end := measureFrom.Add(*duration)
	var mu sync.Mutex
	var lat []time.Duration
	failures, all := 0, 0
	var wg sync.WaitGroup
	for range *clients {
		wg.Go(func() {
			var mine []time.Duration
			failed, sent := 0, 0
			for {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				req, err := idleRequest(*base, bodies[rand.N(len(bodies))])
				if err != nil {
					failed++
					continue
				}
				resp, err := hc.Do(req)
				sent++
				ok := err == nil && resp.StatusCode == http.StatusOK
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if t0.Before(measureFrom) {
					continue
				}
				mine = append(mine, time.Since(t0))
				if !ok {
					failed++
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			failures += failed
			all += sent
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.Sort(lat)
	r := idleRun{Checkins: len(lat), All: all, Failures: failures, Seconds: duration.Seconds()}
	for _, q := range idleQuantiles {
		r.Quantiles = append(r.Quantiles, quantile(lat, q))
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

func (r idleResult) print(p *printer) {
	p.sectionf("Idle check-ins against a no-op server: %d cached nodes, %d clients, saturated, %s each, load generator in its own process",
		r.nodes, r.clients, r.duration)
	p.linef("the binary is measured %d time(s), each time between two no-op runs; CPU is the server process's per check-in, warm-up included", r.rounds)
	p.linef("every server answers POST /v1/steady-state with %q; the no-op one reads the body and writes those bytes", strings.TrimSpace(r.reply))
	p.linef("%-28s %10s %9s %9s %9s %9s %9s %8s %9s", "server", "req/s", "p50", "p90", "p99", "p99.9", "max", "failed", "CPU/req")
	for _, run := range r.runs {
		q := run.Quantiles
		for len(q) < len(idleQuantiles) {
			q = append(q, 0)
		}
		cpu := "-"
		if c := run.cpuPer(); c > 0 {
			cpu = fmt.Sprintf("%.1fµs", float64(c)/float64(time.Microsecond))
		}
		p.linef("%-28s %10.0f %9s %9s %9s %9s %9s %8d %9s", run.Server, run.rate(), us(q[0]), us(q[1]), us(q[2]), us(q[3]), us(q[4]), run.Failures, cpu)
	}
	rate, cpu := r.ratios()
	pct := func(v []float64) string {
		s := make([]string, len(v))
		for i, x := range v {
			s[i] = fmt.Sprintf("%.1f%%", 100*x)
		}
		return strings.Join(s, ", ")
	}
	p.linef("reboot-manager / no-op throughput, each round against the mean of the no-op runs around it: %s; median %.1f%%", pct(rate), 100*median(rate))
	if len(cpu) > 0 {
		p.linef("reboot-manager / no-op CPU per check-in, each round: %s; median %.1f%%", pct(cpu), 100*median(cpu))
	}
	p.linef("reboot-manager's API requests during the runs (audit log, health probes left out): %d %v",
		r.apiRequests(), r.realAPIRequests)
}
