package access

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reboot-manager/reboot-manager/internal/testing/selfsigned"
)

func selfSigned(t *testing.T, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	certPEM, keyPEM, err := selfsigned.Certificate(cn)
	require.NoError(t, err)
	return certPEM, keyPEM
}

// secretVolume writes files the way the kubelet updates a Secret volume: into a new
// timestamped folder, then an atomic rename of the ..data symlink; the visible files
// are symlinks through ..data.
type secretVolume struct {
	t   *testing.T
	dir string
	gen int
}

func (v *secretVolume) write(files map[string][]byte) {
	v.t.Helper()
	v.gen++
	ts := filepath.Join(v.dir, "..gen"+string(rune('0'+v.gen)))
	require.NoError(v.t, os.Mkdir(ts, 0o755))
	for name, b := range files {
		require.NoError(v.t, os.WriteFile(filepath.Join(ts, name), b, 0o600))
		link := filepath.Join(v.dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			require.NoError(v.t, os.Symlink(filepath.Join("..data", name), link))
		}
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	require.NoError(v.t, os.Symlink(filepath.Base(ts), tmp))
	require.NoError(v.t, os.Rename(tmp, filepath.Join(v.dir, "..data")))
}

// TestCertificateFileRotation: after the certificate and key are replaced on disk (as
// a Secret volume is), new TLS handshakes get the new certificate, with no restart; a
// certificate that does not match its key is not taken.
func TestCertificateFileRotation(t *testing.T) {
	cert1, key1 := selfSigned(t, "first")
	cert2, key2 := selfSigned(t, "second")
	vol := &secretVolume{t: t, dir: t.TempDir()}
	vol.write(map[string][]byte{"tls.crt": cert1, "tls.key": key1})

	clock := newClock()
	var logs bytes.Buffer
	cf, err := LoadCertificateFile(filepath.Join(vol.dir, "tls.crt"), filepath.Join(vol.dir, "tls.key"),
		ReloadOptions{Now: clock.Now, Interval: 3 * time.Second, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err)

	// Serve as run.go does: ServeTLS with GetCertificate and no files.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{
		Handler:   http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }),
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: cf.GetCertificate},
		ErrorLog:  slog.NewLogLogger(slog.DiscardHandler, slog.LevelError),
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })

	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(cert1))
	require.True(t, roots.AppendCertsFromPEM(cert2))
	// served returns the common name of the certificate a new connection gets.
	served := func() string {
		t.Helper()
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Get("https://" + ln.Addr().String() + "/")
		require.NoError(t, err)
		defer resp.Body.Close()
		return resp.TLS.PeerCertificates[0].Subject.CommonName
	}
	require.Equal(t, "first", served())

	// Half-way through a rotation: new certificate, old key. Not taken.
	vol.write(map[string][]byte{"tls.crt": cert2, "tls.key": key1})
	clock.Advance(3 * time.Second)
	assert.Equal(t, "first", served())
	assert.Contains(t, logs.String(), "invalid TLS certificate")

	vol.write(map[string][]byte{"tls.crt": cert2, "tls.key": key2})
	assert.Equal(t, "first", served(), "not checked again before the interval")
	clock.Advance(3 * time.Second)
	assert.Equal(t, "second", served(), "a new handshake gets the new certificate")
	assert.Contains(t, logs.String(), "TLS certificate reloaded")
	assert.Equal(t, "second", cf.Certificate().Leaf.Subject.CommonName)

	// Files rewritten in place work too.
	require.NoError(t, os.Remove(filepath.Join(vol.dir, "tls.crt")))
	require.NoError(t, os.Remove(filepath.Join(vol.dir, "tls.key")))
	require.NoError(t, os.WriteFile(filepath.Join(vol.dir, "tls.crt"), cert1, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(vol.dir, "tls.key"), key1, 0o600))
	clock.Advance(3 * time.Second)
	assert.Equal(t, "first", served())
}

func TestLoadCertificateFileErrors(t *testing.T) {
	dir := t.TempDir()
	cert1, key1 := selfSigned(t, "first")
	_, key2 := selfSigned(t, "second")
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, b, 0o600))
		return p
	}
	c1, k1, k2 := write("c1", cert1), write("k1", key1), write("k2", key2)
	_, err := LoadCertificateFile(c1, k1, ReloadOptions{})
	require.NoError(t, err)
	_, err = LoadCertificateFile(c1, k2, ReloadOptions{})
	assert.ErrorContains(t, err, "private key does not match public key")
	_, err = LoadCertificateFile(c1, filepath.Join(dir, "missing"), ReloadOptions{})
	assert.ErrorIs(t, err, os.ErrNotExist)
	_, err = LoadCertificateFile(k1, c1, ReloadOptions{})
	assert.ErrorContains(t, err, "certificate "+k1+" and key "+c1)
}
