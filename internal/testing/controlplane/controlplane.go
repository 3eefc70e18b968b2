package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Controllers are the kube-controller-manager controllers the tests rely on: pods of
// Deployments, ReplicaSets, DaemonSets and Jobs, PDB status (disruption), owner
// references, namespaces and their default ServiceAccount.
var Controllers = []string{
	"deployment-controller", "replicaset-controller", "daemonset-controller", "job-controller",
	"disruption-controller", "garbage-collector-controller", "namespace-controller",
	"serviceaccount-controller", "serviceaccount-token-controller",
	"root-ca-certificate-publisher-controller",
}

// adminToken authenticates the test's own clients and the controllers as system:masters.
const adminToken = "reboot-manager-test-admin"

// ControlPlane is a running etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler.
type ControlPlane struct {
	// Dir holds the certificates, kubeconfig, logs and etcd data; removed by Stop.
	Dir string
	// Kubeconfig is the path of a kubeconfig file for a cluster admin.
	Kubeconfig string
	// Config is the admin's client configuration.
	Config *rest.Config
	// Client is a clientset for a cluster admin.
	Client kubernetes.Interface
	// AuditLog is the path of the API server's audit log (JSON lines, level Metadata).
	AuditLog string

	procs   []*process // in start order
	apiBin  string
	apiArgs []string
}

// BinDir returns the folder holding the control-plane binaries: CONTROLPLANE_BIN when
// set, otherwise what hack/controlplane.sh builds (or finds cached) and prints.
func BinDir() (string, error) {
	if d := os.Getenv("CONTROLPLANE_BIN"); d != "" {
		return d, nil
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the repository: set CONTROLPLANE_BIN")
	}
	script := filepath.Join(filepath.Dir(file), "..", "..", "..", "hack", "controlplane.sh")
	cmd := exec.Command("bash", script)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("hack/controlplane.sh could not build the control-plane binaries: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Start starts a control plane and waits until it serves and its controllers run.
func Start(ctx context.Context) (*ControlPlane, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return nil, fmt.Errorf("control-plane binary missing (run hack/controlplane.sh): %w", err)
		}
	}
	dir, err := makeDir()
	if err != nil {
		return nil, err
	}
	cp := &ControlPlane{Dir: dir, Kubeconfig: filepath.Join(dir, "admin.kubeconfig"), AuditLog: filepath.Join(dir, "audit.log")}
	if err := cp.start(ctx, bin); err != nil {
		cp.Stop()
		return nil, err
	}
	return cp, nil
}

func (cp *ControlPlane) start(ctx context.Context, bin string) error {
	ports, err := FreePorts(3)
	if err != nil {
		return err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	apiURL := "https://127.0.0.1:" + strconv.Itoa(ports[2])
	certs, err := writePKI(cp.Dir)
	if err != nil {
		return err
	}
	if err := cp.writeFiles(apiURL, certs); err != nil {
		return err
	}

	etcd, err := startProcess(cp.Dir, filepath.Join(bin, "etcd"), "etcd",
		"--name=default", "--data-dir="+filepath.Join(cp.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL, "--unsafe-no-fsync", "--log-level=warn")
	if err != nil {
		return err
	}
	cp.procs = append(cp.procs, etcd)

	cp.apiBin = filepath.Join(bin, "kube-apiserver")
	cp.apiArgs = []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port=" + strconv.Itoa(ports[2]),
		"--tls-cert-file=" + certs.servingCert, "--tls-private-key-file=" + certs.servingKey,
		"--token-auth-file=" + filepath.Join(cp.Dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + certs.serviceAccountPub,
		"--service-account-signing-key-file=" + certs.serviceAccountKey,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--audit-policy-file=" + filepath.Join(cp.Dir, "audit-policy.yaml"),
		"--audit-log-path=" + cp.AuditLog, "--audit-log-mode=blocking",
		"--profiling=false", "--v=0",
	}
	if err := cp.StartAPIServer(ctx); err != nil {
		return err
	}

	kcm, err := startProcess(cp.Dir, filepath.Join(bin, "kube-controller-manager"), "kube-controller-manager",
		"--kubeconfig="+cp.Kubeconfig, "--leader-elect=false", "--secure-port=0",
		"--controllers="+strings.Join(Controllers, ","),
		"--service-account-private-key-file="+certs.serviceAccountKey,
		"--root-ca-file="+certs.caCert, "--concurrent-gc-syncs=5", "--v=0")
	if err != nil {
		return err
	}
	cp.procs = append(cp.procs, kcm)
	sched, err := startProcess(cp.Dir, filepath.Join(bin, "kube-scheduler"), "kube-scheduler",
		"--kubeconfig="+cp.Kubeconfig, "--leader-elect=false", "--secure-port=0", "--v=0")
	if err != nil {
		return err
	}
	cp.procs = append(cp.procs, sched)
	// The serviceaccount controller creates "default" in every namespace; pods cannot
	// be created before it exists, so its appearance means the controllers run.
	return cp.poll(ctx, time.Minute, "the default ServiceAccount", func(ctx context.Context) (bool, error) {
		_, err := cp.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, ignoreNotFound(err)
	})
}

// StopAPIServer stops kube-apiserver (SIGTERM, then SIGKILL), as an outage would;
// everything else keeps running. StartAPIServer brings it back.
func (cp *ControlPlane) StopAPIServer() {
	for i, p := range cp.procs {
		if p.name == "kube-apiserver" {
			p.stop(10 * time.Second)
			cp.procs = append(cp.procs[:i], cp.procs[i+1:]...)
			return
		}
	}
}

// StartAPIServer starts kube-apiserver with its usual flags and port, and waits until
// it is ready.
func (cp *ControlPlane) StartAPIServer(ctx context.Context) error {
	api, err := startProcess(cp.Dir, cp.apiBin, "kube-apiserver", cp.apiArgs...)
	if err != nil {
		return err
	}
	cp.procs = append(cp.procs, api)
	return cp.waitReady(ctx, api)
}

// writeFiles writes the token file, the audit policy and the admin kubeconfig, and
// builds the admin client.
func (cp *ControlPlane) writeFiles(apiURL string, certs pki) error {
	tokens := adminToken + `,admin,admin,"system:masters"` + "\n"
	if err := os.WriteFile(filepath.Join(cp.Dir, "tokens.csv"), []byte(tokens), 0o600); err != nil {
		return err
	}
	policy := "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n"
	if err := os.WriteFile(filepath.Join(cp.Dir, "audit-policy.yaml"), []byte(policy), 0o600); err != nil {
		return err
	}
	if err := WriteKubeconfig(cp.Kubeconfig, apiURL, certs.caCert, adminToken); err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 500, 1000
	cp.Config = cfg
	cp.Client, err = kubernetes.NewForConfig(cfg)
	return err
}

// WriteKubeconfig writes a kubeconfig file for a bearer token.
func WriteKubeconfig(path, server, caFile, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: caFile}
	cfg.AuthInfos["test"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	cfg.CurrentContext = "test"
	return clientcmd.WriteToFile(*cfg, path)
}

// waitReady waits for the API server's /readyz, failing early if a process died.
func (cp *ControlPlane) waitReady(ctx context.Context, procs ...*process) error {
	return cp.poll(ctx, 90*time.Second, "kube-apiserver /readyz", func(ctx context.Context) (bool, error) {
		for _, p := range procs {
			if done, err := p.exited(); done {
				return false, fmt.Errorf("%s exited (%w); last log lines:\n%s", p.name, err, p.tail(30))
			}
		}
		var code int
		cp.Client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&code)
		return code == http.StatusOK, nil
	})
}

// poll runs cond every 100ms until it is true, fails, or timeout passes; a timeout
// error names what was awaited and ends with the logs of the processes.
func (cp *ControlPlane) poll(ctx context.Context, timeout time.Duration, what string, cond wait.ConditionWithContextFunc) error {
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, cond)
	if err == nil {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "waiting for %s: %v", what, err)
	for _, p := range cp.procs {
		fmt.Fprintf(&b, "\n--- %s (last lines) ---\n%s", p.name, p.tail(15))
	}
	return errors.New(b.String())
}

// Stop stops every process, newest first, and removes Dir.
func (cp *ControlPlane) Stop() {
	for i := len(cp.procs) - 1; i >= 0; i-- {
		cp.procs[i].stop(10 * time.Second)
	}
	cp.procs = nil
	if cp.Dir != "" && os.Getenv("CONTROLPLANE_KEEP") == "" {
		_ = os.RemoveAll(cp.Dir)
	}
}

func ignoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
