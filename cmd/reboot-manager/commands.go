package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/clock"
	"sigs.k8s.io/yaml"

	"github.com/reboot-manager/reboot-manager/evict"
	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/policy"
	"github.com/reboot-manager/reboot-manager/replace"
)

// The commands for humans, beside the server: `status` and `release`.

// kubeFlags are the commands' kubeconfig flags, loaded as kubectl loads them:
// --kubeconfig, else the files $KUBECONFIG lists, else ~/.kube/config, else the
// in-cluster configuration; --context picks a context other than the current one.
type kubeFlags struct {
	kubeconfig, context *string
	getenv              func(string) string
}

func addKubeFlags(fs *flag.FlagSet, getenv func(string) string) kubeFlags {
	return kubeFlags{
		getenv:     getenv,
		kubeconfig: fs.String("kubeconfig", "", "kubeconfig file (default: the files $KUBECONFIG lists, else ~/.kube/config, else in-cluster)"),
		context:    fs.String("context", "", "the kubeconfig context to use (default: its current context)"),
	}
}

// commandClient builds a clientset from the kubeconfig flags.
func commandClient(k kubeFlags) (kubernetes.Interface, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if list := k.getenv(clientcmd.RecommendedConfigPathEnvVar); list != "" {
		rules.Precedence = filepath.SplitList(list)
	}
	rules.ExplicitPath = *k.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: *k.context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load the kubeconfig: %w", err)
	}
	cfg.UserAgent = "reboot-manager-cli/" + version
	return kubernetes.NewForConfig(cfg)
}

// statusCommand prints the lock, the policy and what holds reboots back, read from the
// cluster: it needs only a kubeconfig that may read nodes, pods and the namespace's
// ConfigMaps.
func statusCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("reboot-manager status", flag.ContinueOnError)
	kube := addKubeFlags(fs, getenv)
	namespace := fs.String("namespace", cmp.Or(getenv("POD_NAMESPACE"), "reboot-manager"), "reboot-manager's namespace")
	fs.StringVar(namespace, "n", *namespace, "short for --namespace")
	configMap := fs.String("config-map", "reboot-manager-config", "the ConfigMap holding the policy file under config.yaml")
	configFile := fs.String("config", "", "read the policy from this file instead of the ConfigMap")
	pauseName := fs.String("pause-configmap", policy.DefaultPauseConfigMap, "the pause ConfigMap")
	output := fs.String("o", "text", "output: text (tables), wide (tables with more columns), json or yaml (the same fields as GET /status)")
	fs.StringVar(output, "output", *output, "same as -o")
	if err := parseFlags(fs, args, "reboot-manager status [flags]: print the lock, the policy and what holds reboots back, from the cluster", stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected arguments: %q", fs.Args())
	}
	if !slices.Contains(statusOutputs, *output) {
		return usagef("-o must be one of %s, got %q", strings.Join(statusOutputs, ", "), *output)
	}
	client, err := commandClient(kube)
	if err != nil {
		return err
	}
	cfg, note, policyState := clusterPolicy(ctx, client, *namespace, *configMap, *configFile)
	pause, err := client.CoreV1().ConfigMaps(*namespace).Get(ctx, *pauseName, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("read the pause ConfigMap %s/%s: %w", *namespace, *pauseName, err)
	}
	paused := func() (string, bool) { return "", false }
	if err == nil {
		paused = func() (string, bool) { return pause.Data["reason"], true }
	}
	list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	nodes := make([]*corev1.Node, len(list.Items))
	for i := range list.Items {
		nodes[i] = &list.Items[i]
	}
	var blockers []policy.BlockerState
	if cfg != nil {
		pol := policy.New(policy.Options{Config: func() *policy.Config { return cfg }, Client: client})
		pol.CheckBlockers(ctx)
		blockers = pol.Blockers()
	}
	records, err := replace.ListRecords(ctx, client, *namespace)
	if err != nil {
		note = strings.TrimSpace(note + " replacement records not readable: " + err.Error())
	}
	s := buildStatus(statusInput{
		now: time.Now(), source: "cluster", nodes: nodes, config: cfg, paused: paused,
		drain: func(node string) string { return podsLeft(ctx, client, node) }, blockers: blockers,
		replacements: records, note: note, configState: policyState,
	})
	return writeStatus(s, *output, stdout)
}

// statusOutputs are the formats of status -o.
var statusOutputs = []string{"text", "wide", "json", "yaml"}

// writeStatus writes s in the format output names (one of statusOutputs).
func writeStatus(s status, output string, w io.Writer) error {
	switch output {
	case "json":
		return s.writeJSON(w)
	case "yaml":
		b, err := yaml.Marshal(s) // its JSON fields, as kubectl -o yaml
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	case "wide":
		return s.writeTables(w, true)
	}
	return s.writeText(w)
}

// clusterPolicy reads the policy file from a file, else from its ConfigMap; without
// either, the defaults, with a note saying so. A policy that cannot be read or is
// invalid is no error: the status shows everything else, and the policy's error
// (the servers keep their last valid version, which is not stored in the cluster).
func clusterPolicy(ctx context.Context, client kubernetes.Interface, namespace, name, file string) (*policy.Config, string, policy.ConfigState) {
	var data []byte
	state := policy.ConfigState{Source: file}
	if file != "" {
		var err error
		if data, err = os.ReadFile(file); err != nil {
			state.Error = err.Error()
			return nil, policyUnknown, state
		}
	} else {
		state.Source = fmt.Sprintf("ConfigMap %s/%s config.yaml", namespace, name)
		cm, err := client.CoreV1().ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			cfg, _ := policy.Parse(nil)
			return cfg, fmt.Sprintf("no ConfigMap %s/%s: slots and windows shown are the defaults, not necessarily the server's flags", namespace, name), policy.ConfigState{}
		case err != nil:
			state.Error = fmt.Sprintf("read the policy ConfigMap: %v", err)
			return nil, policyUnknown, state
		}
		data = []byte(cm.Data["config.yaml"])
	}
	cfg, err := policy.ParseFile(data)
	if err != nil {
		state.Error = err.Error()
		return nil, policyUnknown, state
	}
	return cfg, "", state
}

// policyUnknown is the status command's note when it cannot read the policy.
const policyUnknown = "the policy could not be read or is invalid: the servers ignore such a version and keep the last valid one they read, " +
	"which is not stored in the cluster, so groups, slots, windows and blockers are not shown here; " +
	"a replica's GET /status shows the policy in force (kubectl port-forward deploy/reboot-manager 9090, then curl localhost:9090/status)"

// podsLeft says how many pods a drain of node still has to evict, from the API server.
func podsLeft(ctx context.Context, client kubernetes.Interface, node string) string {
	pods, err := client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	if err != nil {
		return "unknown: " + err.Error()
	}
	left := 0
	for i := range pods.Items {
		if evict.MustLeave(&pods.Items[i]) {
			left++
		}
	}
	switch left {
	case 0:
		return "drained"
	case 1:
		return "1 pod left to evict"
	}
	return fmt.Sprintf("%d pods left to evict", left)
}

// releaseCommand releases the slot a node holds, with a write conditioned on what it
// read, and uncordons the node only if reboot-manager cordoned it.
func releaseCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("reboot-manager release", flag.ContinueOnError)
	kube := addKubeFlags(fs, getenv)
	if err := parseFlags(fs, args, "reboot-manager release [flags] NODE: release the reboot slot NODE holds", stdout); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("release takes one node name, got %q", fs.Args())
	}
	node := fs.Arg(0)
	client, err := commandClient(kube)
	if err != nil {
		return err
	}
	n, _, err := lock.ReleaseNode(ctx, client, node, clock.RealClock{})
	if errors.Is(err, lock.ErrNotHolder) {
		return fmt.Errorf("node %s holds no reboot slot: nothing released", node)
	}
	if err != nil {
		return err
	}
	cordon := "uncordoned"
	if _, held := n.Annotations[lock.AnnotationHold]; held && n.Spec.Unschedulable {
		cordon = "left cordoned (an operator holds it: annotation " + lock.AnnotationHold + ")"
	} else if n.Spec.Unschedulable {
		cordon = "left cordoned (it was cordoned before reboot-manager took it)"
	}
	fmt.Fprintf(stdout, "released the reboot slot of node %s; %s\n", node, cordon)
	return nil
}

// flagNames finds the flags in a command's --help (flag.PrintDefaults lines).
var flagNames = regexp.MustCompile(`(?m)^  -([\w.-]+)`)

// completionCommand prints a bash completion script: the command names, and each
// command's flags as its --help lists them. The standard flag package has none.
func completionCommand(ctx context.Context, args []string, getenv func(string) string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("reboot-manager completion", flag.ContinueOnError)
	if err := parseFlags(fs, args, "reboot-manager completion bash: print a bash completion script (source <(reboot-manager completion bash))", stdout); err != nil {
		return err
	}
	if fs.NArg() != 1 || fs.Arg(0) != "bash" {
		return usagef("completion takes one shell, bash; got %q", fs.Args())
	}
	var names []string
	fmt.Fprint(stdout, "# bash completion of reboot-manager: source <(reboot-manager completion bash)\n_reboot_manager() {\n"+
		"\tlocal cur=${COMP_WORDS[COMP_CWORD]} words\n\tcase ${COMP_WORDS[1]} in\n")
	for _, c := range commands() {
		names = append(names, c.name)
		if c.run == nil || c.name == "completion" {
			continue
		}
		var help bytes.Buffer
		_ = c.run(ctx, []string{"--help"}, getenv, &help, io.Discard)
		var flags []string
		for _, m := range flagNames.FindAllStringSubmatch(help.String(), -1) {
			flags = append(flags, strings.Repeat("-", min(len(m[1]), 2))+m[1])
		}
		fmt.Fprintf(stdout, "\t%s) words=%q ;;\n", c.name, strings.Join(flags, " "))
	}
	fmt.Fprintf(stdout, "\thelp) words=%q ;;\n\tcompletion) words=bash ;;\n\tesac\n", strings.Join(names, " "))
	fmt.Fprintf(stdout, "\t[ \"$COMP_CWORD\" -eq 1 ] && words=%q\n", strings.Join(names, " "))
	fmt.Fprint(stdout, "\tCOMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n}\ncomplete -o default -F _reboot_manager reboot-manager\n")
	return nil
}
