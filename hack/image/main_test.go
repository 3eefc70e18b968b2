package main

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// The image of the host's platform, built from the real binary and read back from its
// OCI layout: it runs as 65532:65532, its entrypoint is the binary, it holds only the
// binary and the CA bundle, and the unpacked binary answers --version with the tag's
// version. Built twice, the index has the same digest.
func TestImageContents(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "reboot-manager")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -X main.version=v9.8.7", "-o", bin, "./cmd/reboot-manager")
	build.Dir = "../.." // the server's module
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	platform := "linux/" + runtime.GOARCH
	o := options{
		Tag:      "example.invalid/reboot-manager:v9.8.7",
		Binaries: map[string]string{platform: bin},
		CABundle: ca,
	}
	o.Created, _ = sourceDateEpoch("")

	var digests []v1.Hash
	for i := range 2 {
		lay := filepath.Join(dir, "layout", string(rune('a'+i)))
		if err := run(o, lay, filepath.Join(dir, "image.tar")); err != nil {
			t.Fatal(err)
		}
		p, err := layout.FromPath(lay)
		if err != nil {
			t.Fatal(err)
		}
		top, err := p.ImageIndex()
		if err != nil {
			t.Fatal(err)
		}
		m, err := top.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Manifests) != 1 || m.Manifests[0].Annotations["io.containerd.image.name"] != o.Tag {
			t.Fatalf("the layout's index.json names %+v, want one entry named %s", m.Manifests, o.Tag)
		}
		digests = append(digests, m.Manifests[0].Digest)
	}
	if digests[0] != digests[1] {
		t.Fatalf("two builds of the same inputs differ: %s, %s", digests[0], digests[1])
	}

	p, _ := layout.FromPath(filepath.Join(dir, "layout", "a"))
	top, _ := p.ImageIndex()
	idx, err := top.ImageIndex(digests[0])
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Platform == nil || im.Manifests[0].Platform.Architecture != runtime.GOARCH {
		t.Fatalf("index manifests %+v, want one for %s", im.Manifests, platform)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532", cf.Config.User)
	}
	if strings.Join(cf.Config.Entrypoint, " ") != "/reboot-manager" {
		t.Errorf("entrypoint %q, want [/reboot-manager]", cf.Config.Entrypoint)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH || !cf.Created.Equal(o.Created) {
		t.Errorf("config %s/%s created %s", cf.OS, cf.Architecture, cf.Created)
	}

	// Unpack: only the binary and the CA bundle (and their folders), owned by root.
	root := filepath.Join(dir, "rootfs")
	var files []string
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(o.Created) {
			t.Errorf("%s: owner %d:%d, mtime %s", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		target := filepath.Join(root, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(target, 0o755)
		case tar.TypeReg:
			files = append(files, h.Name)
			var b []byte
			if b, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(target, b, os.FileMode(h.Mode))
			}
		default:
			t.Errorf("%s: unexpected entry type %c", h.Name, h.Typeflag)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	sort.Strings(files)
	if want := []string{"etc/ssl/certs/ca-certificates.crt", "reboot-manager"}; strings.Join(files, ",") != strings.Join(want, ",") {
		t.Errorf("image files %q, want only %q", files, want)
	}

	out, err := exec.Command(filepath.Join(root, cf.Config.Entrypoint[0]), "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --version: %v\n%s", cf.Config.Entrypoint[0], err, out)
	}
	if !strings.HasPrefix(string(out), "reboot-manager v9.8.7 ") {
		t.Errorf("--version printed %q, want reboot-manager v9.8.7 ...", out)
	}
}
