// Package monitoring checks reboot-manager's alerting rules with Prometheus's own rule
// parser; it has only tests.
package monitoring
