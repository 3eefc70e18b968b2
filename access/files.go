package access

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"github.com/reboot-manager/reboot-manager/internal/reload"
)

// DefaultReloadInterval is how often, at most, files are checked for changes.
const DefaultReloadInterval = reload.DefaultInterval

// maxFileBytes bounds what is read of a credentials, certificate or key file.
const maxFileBytes = reload.MaxFileBytes

// ReloadOptions tune how file-backed configuration is reloaded. The zero value works.
type ReloadOptions = reload.Options

// CredentialsFile is a credentials file (see ParseCredentials), reloaded when it
// changes. It is a CredentialSource.
type CredentialsFile struct {
	r *reload.Files[*Credentials]
}

// LoadCredentialsFile reads and parses the credentials file at path. An invalid file
// is an error naming the file and the line.
func LoadCredentialsFile(path string, opts ReloadOptions) (*CredentialsFile, error) {
	r, err := reload.NewFile("credentials file", path, ParseCredentials, opts)
	if err != nil {
		return nil, err
	}
	return &CredentialsFile{r}, nil
}

// Credentials returns the credentials in force, reloading the file if it changed.
func (f *CredentialsFile) Credentials() *Credentials { return f.r.Get() }

// CertificateFile is a TLS certificate and its key, read from PEM files and reloaded
// when they change: set its GetCertificate in a tls.Config.
type CertificateFile struct {
	r *reload.Files[*tls.Certificate]
}

// LoadCertificateFile reads the certificate (chain) in certFile and the private key in
// keyFile, which must match.
func LoadCertificateFile(certFile, keyFile string, opts ReloadOptions) (*CertificateFile, error) {
	opts.Defaults()
	r, err := reload.New("TLS certificate", []string{certFile, keyFile}, func(data [][]byte) (*tls.Certificate, error) {
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
	return c.r.Get(), nil
}

// Certificate returns the parsed certificate in force (its Leaf is set).
func (c *CertificateFile) Certificate() *tls.Certificate { return c.r.Get() }

var _ CredentialSource = (*CredentialsFile)(nil)
