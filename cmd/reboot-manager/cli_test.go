package main

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"

	"github.com/reboot-manager/reboot-manager/lock"
	"github.com/reboot-manager/reboot-manager/policy"
)

// invoke runs the command line args (without the program name) as main does, and
// returns the exit code, stdout and stderr.
func invoke(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	t.Cleanup(klog.ClearLogger) // serve routes client-go's log to its handler
	var out, errOut bytes.Buffer
	code := dispatch(t.Context(), args, env(nil), &out, &errOut)
	return code, out.String(), errOut.String()
}

// Without arguments the binary prints its usage (it no longer starts a server);
// help, --help and -h print the same on stdout, exit 0.
func TestUsageListsCommands(t *testing.T) {
	code, usage, errOut := invoke(t)
	assert.Equal(t, 0, code)
	assert.Empty(t, errOut)
	for _, cmd := range []string{"serve", "status", "release", "help", "version", "completion"} {
		assert.Contains(t, usage, "\n  "+cmd+" ", "usage lists %s", cmd)
	}
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}, {"-help"}, {"help", "help"}} {
		code, out, errOut := invoke(t, args...)
		assert.Equal(t, 0, code, "%q", args)
		assert.Equal(t, usage, out, "%q prints the usage", args)
		assert.Empty(t, errOut, "%q", args)
	}
}

// help COMMAND and COMMAND --help print that command's flags on stdout, exit 0.
func TestCommandHelp(t *testing.T) {
	for cmd, flags := range map[string][]string{
		"serve":   {"-listen-address", "-metrics-address", "-config", "-pause-configmap", "-kubeconfig", "-version"},
		"status":  {"-kubeconfig", "-context", "-namespace", "-o"},
		"release": {"-kubeconfig", "-context"},
	} {
		_, viaHelp, _ := invoke(t, "help", cmd)
		for _, args := range [][]string{{"help", cmd}, {cmd, "--help"}, {cmd, "-h"}} {
			code, out, errOut := invoke(t, args...)
			assert.Equal(t, 0, code, "%q", args)
			assert.Empty(t, errOut, "%q", args)
			assert.Equal(t, viaHelp, out, "%q", args)
			assert.Contains(t, out, "usage: reboot-manager "+cmd, "%q", args)
			for _, f := range flags {
				assert.Contains(t, out, "  "+f, "%q lists %s", args, f)
			}
		}
	}
	code, out, errOut := invoke(t, "help", "frobnicate")
	assert.Equal(t, 2, code)
	assert.Empty(t, out)
	assert.Contains(t, errOut, `unknown command "frobnicate"`)
}

// An unknown command is an error on stderr that lists the commands, exit 2.
func TestUnknownCommand(t *testing.T) {
	code, out, errOut := invoke(t, "frobnicate", "--x")
	assert.Equal(t, 2, code)
	assert.Empty(t, out)
	assert.Contains(t, errOut, `unknown command "frobnicate"`)
	for _, cmd := range []string{"serve", "status", "release", "help", "version"} {
		assert.Contains(t, errOut, "\n  "+cmd+" ")
	}
}

// version, --version (the image test's) and serve --version print the version.
func TestVersionCommand(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}, {"serve", "--version"}} {
		code, out, errOut := invoke(t, args...)
		assert.Equal(t, 0, code, "%q", args)
		assert.Empty(t, errOut, "%q", args)
		assert.True(t, strings.HasPrefix(out, "reboot-manager dev go"), "%q printed %q", args, out)
	}
}

// Flag errors are usage errors (exit 2) that name the flag, on stderr only.
func TestCommandFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--no-such-flag"}, {"serve", "--wait=0s"}, {"serve", "extra"},
		{"status", "--no-such-flag"}, {"status", "-o", "xml"}, {"release"}, {"version", "extra"},
	} {
		code, out, errOut := invoke(t, args...)
		assert.Equal(t, 2, code, "%q", args)
		assert.Empty(t, out, "%q", args)
		assert.Contains(t, errOut, "reboot-manager "+args[0]+": ", "%q", args)
		assert.Contains(t, errOut, "reboot-manager help "+args[0], "%q says where the usage is", args)
	}
}

// A mistyped flag without a command (reboot-manager -v) is a usage error that names
// the commands, not serve's flags alone: the user did not type serve.
func TestFlagErrorWithoutCommand(t *testing.T) {
	code, out, errOut := invoke(t, "-v")
	assert.Equal(t, 2, code)
	assert.Empty(t, out)
	assert.Contains(t, errOut, "reboot-manager: flag provided but not defined: -v")
	assert.Contains(t, errOut, "reboot-manager serve")
	assert.Contains(t, errOut, "run 'reboot-manager help' for the commands")
}

// The old command line, flags without serve (manifests from before serve), still
// starts the server, and its log says to use serve; serve itself does not warn.
func TestFlagsWithoutServeAreDeprecated(t *testing.T) {
	code, out, errOut := invoke(t, "--kubeconfig=/nonexistent", "--log-format=text")
	assert.Equal(t, 1, code, "the server started and failed on the kubeconfig")
	assert.Empty(t, out)
	assert.Contains(t, errOut, "load kubeconfig /nonexistent")
	assert.Contains(t, errOut, "level=WARN")
	assert.Contains(t, errOut, "reboot-manager serve")

	code, _, errOut = invoke(t, "serve", "--kubeconfig=/nonexistent", "--log-format=text")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "load kubeconfig /nonexistent")
	assert.NotContains(t, errOut, "level=WARN")
}

// completion bash prints a script that completes the command names and each
// command's flags, as bash runs it.
func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	code, script, errOut := invoke(t, "completion", "bash")
	require.Equal(t, 0, code, errOut)
	complete := func(words ...string) string {
		cmd := exec.Command(bash, "--norc", "-c", `source /dev/stdin; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _reboot_manager; echo "${COMPREPLY[*]}"`, "_")
		cmd.Args = append(cmd.Args, words...)
		cmd.Stdin = strings.NewReader(script)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		return strings.TrimSpace(string(out))
	}
	assert.Equal(t, "serve status", complete("reboot-manager", "s"))
	assert.Equal(t, "release", complete("reboot-manager", "rel"))
	assert.Equal(t, "--listen-address --log-format --log-level", complete("reboot-manager", "serve", "--l"))
	assert.Equal(t, "--namespace", complete("reboot-manager", "status", "--na"))
	assert.Equal(t, "--output", complete("reboot-manager", "status", "--o"))
	assert.Equal(t, "serve status", complete("reboot-manager", "help", "s"))

	code, _, errOut = invoke(t, "completion", "zsh")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "completion takes one shell, bash")
}

// status -o: json and yaml carry the same fields (GET /status's); wide is the text
// tables with when each holder entered its state.
func TestStatusOutputs(t *testing.T) {
	now := time.Date(2026, 11, 30, 11, 0, 0, 0, time.UTC)
	since := now.Add(-5 * time.Minute)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "w1", Annotations: map[string]string{
		lock.AnnotationStatus: string(lock.StateRebooting), lock.AnnotationGroup: "workers",
		lock.AnnotationSince: since.Format(time.RFC3339Nano)}, Labels: map[string]string{lock.LabelLock: "true"}}}
	cfg, err := policy.Parse(nil)
	require.NoError(t, err)
	s := buildStatus(statusInput{now: now, source: "cluster", nodes: []*corev1.Node{node}, config: cfg,
		paused: func() (string, bool) { return "freeze", true }, drain: func(string) string { return "drained" }})
	require.Len(t, s.Holders, 1)

	write := func(output string) string {
		var out bytes.Buffer
		require.NoError(t, writeStatus(s, output, &out))
		return out.String()
	}
	text, wide := write("text"), write("wide")
	assert.Regexp(t, `NODE\s+GROUP\s+STATE\s+FOR\s+DRAIN\s+RESERVATION\n`, text)
	assert.Regexp(t, `w1\s+workers\s+Rebooting\s+5m0s\s+drained\s+-\n`, text)
	assert.Regexp(t, `NODE\s+GROUP\s+STATE\s+FOR\s+DRAIN\s+RESERVATION\s+SINCE\n`, wide)
	assert.Regexp(t, `w1\s+workers\s+Rebooting\s+5m0s\s+drained\s+-\s+2026-11-30T10:55:00Z\n`, wide)
	assert.Contains(t, wide, "PAUSED: freeze")

	var fromJSON, fromYAML status
	require.NoError(t, json.Unmarshal([]byte(write("json")), &fromJSON))
	y := write("yaml")
	assert.Contains(t, y, "holders:\n- age: 5m0s\n")
	require.NoError(t, yaml.UnmarshalStrict([]byte(y), &fromYAML))
	assert.Equal(t, fromJSON, fromYAML)
	assert.Equal(t, "freeze", fromYAML.Paused.Reason)
	assert.Equal(t, since, fromYAML.Holders[0].Since)
}
