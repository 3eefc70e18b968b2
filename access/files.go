package access

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultReloadInterval is how often, at most, files are checked for changes.
const DefaultReloadInterval = 2 * time.Second

// maxFileBytes bounds what is read of a credentials, certificate or key file.
const maxFileBytes = 1 << 20

// ReloadOptions tune how file-backed configuration is reloaded. The zero value works.
type ReloadOptions struct {
	// Interval is the least time between two checks of the files. Default
	// DefaultReloadInterval.
	Interval time.Duration
	// Logger receives a line for each reload and each failed one. Default: discard.
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

func (o *ReloadOptions) defaults() {
	if o.Interval <= 0 {
		o.Interval = DefaultReloadInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// reloading is a value parsed from files, parsed again when their contents change.
type reloading[T any] struct {
	what  string
	paths []string
	parse func(data [][]byte) (T, error)
	opts  ReloadOptions

	cur     atomic.Pointer[version[T]]
	nextDue atomic.Int64 // Unix nanoseconds of the next check
	mu      sync.Mutex   // held by the one caller checking the files
	badSum  [32]byte     // contents that failed last, so that each is logged once
}

type version[T any] struct {
	value T
	sum   [32]byte
}

// newReloading reads and parses the files; an error stops there.
func newReloading[T any](what string, paths []string, parse func([][]byte) (T, error), opts ReloadOptions) (*reloading[T], error) {
	opts.defaults()
	r := &reloading[T]{what: what, paths: paths, parse: parse, opts: opts}
	data, sum, err := readAll(paths)
	if err != nil {
		return nil, err
	}
	v, err := parse(data)
	if err != nil {
		return nil, err
	}
	r.cur.Store(&version[T]{v, sum})
	r.nextDue.Store(opts.Now().Add(opts.Interval).UnixNano())
	return r, nil
}

// get returns the value in force, checking the files first when a check is due. While
// one caller checks, the others get the value in force without waiting.
func (r *reloading[T]) get() T {
	if now := r.opts.Now(); now.UnixNano() >= r.nextDue.Load() && r.mu.TryLock() {
		if now.UnixNano() >= r.nextDue.Load() {
			r.check()
			r.nextDue.Store(now.Add(r.opts.Interval).UnixNano())
		}
		r.mu.Unlock()
	}
	return r.cur.Load().value
}

// check reloads the files if their contents changed. Called with mu held.
func (r *reloading[T]) check() {
	data, sum, err := readAll(r.paths)
	if err != nil {
		r.opts.Logger.Error("cannot read "+r.what+"; keeping the one in force", "err", err)
		return
	}
	if sum == r.cur.Load().sum || sum == r.badSum {
		return
	}
	v, err := r.parse(data)
	if err != nil {
		r.badSum = sum
		r.opts.Logger.Error("invalid "+r.what+"; keeping the one in force", "err", err)
		return
	}
	r.badSum = [32]byte{}
	r.cur.Store(&version[T]{v, sum})
	r.opts.Logger.Info(r.what+" reloaded", "files", r.paths)
}

// readAll reads the files and returns their contents and a hash of them all.
func readAll(paths []string) ([][]byte, [32]byte, error) {
	h := sha256.New()
	data := make([][]byte, len(paths))
	for i, p := range paths {
		b, err := readFile(p)
		if err != nil {
			return nil, [32]byte{}, err
		}
		data[i] = b
		_ = binary.Write(h, binary.BigEndian, int64(len(b)))
		h.Write(b)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return data, sum, nil
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxFileBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxFileBytes)
	}
	return b, nil
}

// CredentialsFile is a credentials file (see ParseCredentials), reloaded when it
// changes. It is a CredentialSource.
type CredentialsFile struct {
	r *reloading[*Credentials]
}

// LoadCredentialsFile reads and parses the credentials file at path. An invalid file
// is an error naming the file and the line.
func LoadCredentialsFile(path string, opts ReloadOptions) (*CredentialsFile, error) {
	r, err := newReloading("credentials file", []string{path}, func(data [][]byte) (*Credentials, error) {
		c, err := ParseCredentials(data[0])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return c, nil
	}, opts)
	if err != nil {
		return nil, err
	}
	return &CredentialsFile{r}, nil
}

// Credentials returns the credentials in force, reloading the file if it changed.
func (f *CredentialsFile) Credentials() *Credentials { return f.r.get() }

// CertificateFile is a TLS certificate and its key, read from PEM files and reloaded
// when they change: set its GetCertificate in a tls.Config.
type CertificateFile struct {
	r *reloading[*tls.Certificate]
}

// LoadCertificateFile reads the certificate (chain) in certFile and the private key in
// keyFile, which must match.
func LoadCertificateFile(certFile, keyFile string, opts ReloadOptions) (*CertificateFile, error) {
	opts.defaults()
	r, err := newReloading("TLS certificate", []string{certFile, keyFile}, func(data [][]byte) (*tls.Certificate, error) {
		cert, err := tls.X509KeyPair(data[0], data[1])
		if err != nil {
			return nil, fmt.Errorf("certificate %s and key %s: %w", certFile, keyFile, err)
		}
		if cert.Leaf == nil {
			if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
				return nil, fmt.Errorf("certificate %s: %w", certFile, err)
			}
		}
		if now := opts.Now(); now.After(cert.Leaf.NotAfter) {
			opts.Logger.Warn("TLS certificate has expired", "file", certFile, "notAfter", cert.Leaf.NotAfter)
		}
		return &cert, nil
	}, opts)
	if err != nil {
		return nil, err
	}
	return &CertificateFile{r}, nil
}

// GetCertificate returns the certificate in force, reloading the files if they
// changed. It has the signature of tls.Config.GetCertificate.
func (c *CertificateFile) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.r.get(), nil
}

// Certificate returns the parsed certificate in force (its Leaf is set).
func (c *CertificateFile) Certificate() *tls.Certificate { return c.r.get() }

var _ CredentialSource = (*CredentialsFile)(nil)
