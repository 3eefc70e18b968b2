package fleetsim

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// BuildServer builds the reboot-manager binary from this repository into dir, with
// the given build tags, and returns its path.
func BuildServer(dir string, tags ...string) (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("cannot locate the repository")
	}
	repo := filepath.Join(filepath.Dir(file), "..", "..", "..") // internal/testing/fleetsim
	out := filepath.Join(dir, "reboot-manager")
	if len(tags) > 0 {
		out += "-" + strings.Join(tags, "-")
	}
	cmd := exec.Command("go", "build", "-tags="+strings.Join(tags, ","), "-o", out, "./cmd/reboot-manager")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/reboot-manager: %w\n%s", err, b)
	}
	return out, nil
}
