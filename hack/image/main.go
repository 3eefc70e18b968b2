// Command image builds reboot-manager's container image without a container daemon:
// for each platform, one layer holding the static binary (/reboot-manager) and a CA
// bundle (/etc/ssl/certs/ca-certificates.crt), run as 65532:65532, assembled FROM
// scratch with go-containerregistry, into an OCI image layout and an archive of it.
//
//	go run ./image --tag ghcr.io/reboot-manager/reboot-manager:v0.1.0 \
//	  --binary linux/amd64=bin/linux_amd64/reboot-manager \
//	  --binary linux/arm64=bin/linux_arm64/reboot-manager \
//	  --ca-bundle /etc/ssl/certs/ca-certificates.crt \
//	  --layout bin/image --archive bin/image.tar
//
// The build is reproducible: every timestamp is SOURCE_DATE_EPOCH (default 0), tar
// entries are sorted with fixed owners and modes, so the same inputs give the same
// digest. It prints the digest of the image index.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image's fixed contents.
const (
	binaryPath   = "reboot-manager"
	caBundlePath = "etc/ssl/certs/ca-certificates.crt"
	user         = "65532:65532"
)

// options say what to build.
type options struct {
	// Tag is the image reference the layout names, e.g.
	// ghcr.io/reboot-manager/reboot-manager:v0.1.0; its tag is also the
	// org.opencontainers.image.version label.
	Tag string
	// Binaries maps a platform ("linux/amd64") to the static binary for it.
	Binaries map[string]string
	// CABundle is the PEM file installed as /etc/ssl/certs/ca-certificates.crt.
	CABundle string
	// Created is every timestamp in the image.
	Created time.Time
}

func main() {
	var o options
	var layoutDir, archive string
	o.Binaries = map[string]string{}
	flag.StringVar(&o.Tag, "tag", "", "image reference, e.g. ghcr.io/reboot-manager/reboot-manager:v0.1.0")
	flag.Func("binary", "PLATFORM=PATH, e.g. linux/arm64=bin/linux_arm64/reboot-manager (repeatable)", func(s string) error {
		p, path, ok := strings.Cut(s, "=")
		if !ok || !strings.Contains(p, "/") {
			return fmt.Errorf("want OS/ARCH=PATH, got %q", s)
		}
		o.Binaries[p] = path
		return nil
	})
	flag.StringVar(&o.CABundle, "ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "PEM CA bundle to install")
	flag.StringVar(&layoutDir, "layout", "", "OCI image layout folder to write (replaced)")
	flag.StringVar(&archive, "archive", "", "also write the layout as a tar archive (oci-archive) here")
	flag.Parse()
	var err error
	if o.Created, err = sourceDateEpoch(os.Getenv("SOURCE_DATE_EPOCH")); err == nil {
		err = run(o, layoutDir, archive)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func sourceDateEpoch(s string) (time.Time, error) {
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	sec, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH: %w", err)
	}
	return time.Unix(sec, 0).UTC(), nil
}

func run(o options, layoutDir, archive string) error {
	if layoutDir == "" {
		return errors.New("--layout is required")
	}
	idx, err := build(o)
	if err != nil {
		return err
	}
	if err := writeLayout(idx, o.Tag, layoutDir); err != nil {
		return err
	}
	if archive != "" {
		if err := writeArchive(layoutDir, archive, o.Created); err != nil {
			return err
		}
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	fmt.Println(d)
	return nil
}

// build returns the multi-platform image index.
func build(o options) (v1.ImageIndex, error) {
	if o.Tag == "" {
		return nil, errors.New("--tag is required")
	}
	if len(o.Binaries) == 0 {
		return nil, errors.New("no --binary given")
	}
	version := o.Tag[strings.LastIndex(o.Tag, ":")+1:]
	ca, err := os.ReadFile(o.CABundle)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	platforms := make([]string, 0, len(o.Binaries))
	for p := range o.Binaries {
		platforms = append(platforms, p)
	}
	sort.Strings(platforms)
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range platforms {
		bin, err := os.ReadFile(o.Binaries[p])
		if err != nil {
			return nil, fmt.Errorf("binary for %s: %w", p, err)
		}
		osName, arch, _ := strings.Cut(p, "/")
		img, err := image(osName, arch, version, bin, ca, o.Created)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: osName, Architecture: arch}},
		})
	}
	return idx, nil
}

// image returns the image of one platform: one layer, the config that runs the binary
// as 65532:65532.
func image(osName, arch, version string, bin, ca []byte, created time.Time) (v1.Image, error) {
	layerTar, err := tarFiles([]file{
		{name: "etc/", mode: 0o755 | fs.ModeDir},
		{name: "etc/ssl/", mode: 0o755 | fs.ModeDir},
		{name: "etc/ssl/certs/", mode: 0o755 | fs.ModeDir},
		{name: caBundlePath, mode: 0o644, data: ca},
		{name: binaryPath, mode: 0o755, data: bin},
	}, created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		History:   v1.History{Created: v1.Time{Time: created}, CreatedBy: "hack/image: /reboot-manager, " + "/" + caBundlePath},
		MediaType: types.OCILayer,
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = osName, arch
	cf.Created = v1.Time{Time: created}
	cf.Config = v1.Config{
		User:         user,
		Entrypoint:   []string{"/" + binaryPath},
		Env:          []string{"SSL_CERT_FILE=/" + caBundlePath},
		ExposedPorts: map[string]struct{}{"8080/tcp": {}, "9090/tcp": {}},
		Labels: map[string]string{
			"org.opencontainers.image.title":    "reboot-manager",
			"org.opencontainers.image.version":  version,
			"org.opencontainers.image.source":   "https://github.com/reboot-manager/reboot-manager",
			"org.opencontainers.image.licenses": "Apache-2.0",
		},
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	return mutate.CreatedAt(img, v1.Time{Time: created})
}

// file is one entry of a layer.
type file struct {
	name string
	mode fs.FileMode
	data []byte
}

// tarFiles returns a tar of files sorted by name, owned by root, all at mtime.
func tarFiles(files []file, mtime time.Time) ([]byte, error) {
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	var b bytes.Buffer
	w := tar.NewWriter(&b)
	for _, f := range files {
		h := &tar.Header{
			Name: f.name, Mode: int64(f.mode.Perm()), ModTime: mtime, Format: tar.FormatPAX,
			Typeflag: tar.TypeReg, Size: int64(len(f.data)),
		}
		if f.mode.IsDir() {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := w.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := w.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// writeLayout replaces dir with an OCI image layout holding idx, named tag.
func writeLayout(idx v1.ImageIndex, tag, dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		// The tag alone, as skopeo and podman name images in a layout; the full
		// reference, as containerd's import does.
		"org.opencontainers.image.ref.name": tag[strings.LastIndex(tag, ":")+1:],
		"io.containerd.image.name":          tag,
	}))
}

// writeArchive tars the layout folder (an oci-archive), sorted, at mtime.
func writeArchive(dir, archive string, mtime time.Time) error {
	var files []file
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			files = append(files, file{name: rel + "/", mode: 0o755 | fs.ModeDir})
			return nil
		}
		data, err := os.ReadFile(path)
		files = append(files, file{name: rel, mode: 0o644, data: data})
		return err
	})
	if err != nil {
		return err
	}
	b, err := tarFiles(files, mtime)
	if err != nil {
		return err
	}
	return os.WriteFile(archive, b, 0o644)
}
