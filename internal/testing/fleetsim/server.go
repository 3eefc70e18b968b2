package fleetsim

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/reboot-manager/reboot-manager/internal/testing/controlplane"
)

// Server is a reboot-manager binary running as a child process.
type Server struct {
	// FleetLock is the base URL Zincati would use ("http://127.0.0.1:port/").
	FleetLock string
	// Admin is the base URL of /metrics, /healthz and /readyz.
	Admin string

	cmd  *exec.Cmd
	logs *LogBuffer
	done chan struct{}
}

// StartServer runs the reboot-manager binary bin's server (serve) with kubeconfig on
// free loopback ports, plus args, and waits until it is ready. Its output goes to logs (which may be
// nil). The process is killed if this one dies.
func StartServer(bin, kubeconfig string, logs *LogBuffer, args ...string) (*Server, error) {
	ports, err := controlplane.FreePorts(2)
	if err != nil {
		return nil, err
	}
	if logs == nil {
		logs = &LogBuffer{}
	}
	s := &Server{
		FleetLock: fmt.Sprintf("http://127.0.0.1:%d/", ports[0]),
		Admin:     fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
		logs:      logs,
		done:      make(chan struct{}),
	}
	s.cmd = exec.Command(bin, append([]string{
		"serve",
		"--kubeconfig=" + kubeconfig,
		fmt.Sprintf("--listen-address=127.0.0.1:%d", ports[0]),
		fmt.Sprintf("--metrics-address=127.0.0.1:%d", ports[1]),
	}, args...)...)
	s.cmd.Stdout, s.cmd.Stderr = logs, logs
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	var waitErr error
	go func() { waitErr = s.cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return nil, fmt.Errorf("reboot-manager exited: %w\n%s", waitErr, logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if resp, err := http.Get(s.Admin + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
	}
	s.Kill()
	return nil, fmt.Errorf("reboot-manager not ready after 30s:\n%s", logs.String())
}

// Stop sends SIGTERM and waits for the process to exit; it reports an unclean exit.
func (s *Server) Stop() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.Kill()
		return errors.New("reboot-manager did not stop within 30s of SIGTERM")
	}
	if st := s.cmd.ProcessState; st != nil && !st.Success() {
		return fmt.Errorf("reboot-manager exited with %s", st)
	}
	return nil
}

// Kill stops the process at once (SIGKILL), as a crash would.
func (s *Server) Kill() {
	_ = s.cmd.Process.Kill()
	<-s.done
}

// Metrics returns the text of /metrics.
func (s *Server) Metrics() (string, error) {
	resp, err := http.Get(s.Admin + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// LogBuffer collects a process's output, safe for concurrent use.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
