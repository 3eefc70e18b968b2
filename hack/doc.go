// Package hack holds the build and release tools of reboot-manager, in a module of their
// own so that their dependencies (go-containerregistry, Prometheus's rule parser) stay
// out of the server's go.mod: image builds the container image, monitoring checks the
// alerting rules.
package hack
