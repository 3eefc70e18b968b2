package access

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// ParseTrustedProxies parses a comma-separated list of CIDRs (10.0.0.0/8, fd00::/8)
// or single addresses (a /32 or /128). White space around an item is ignored.
func ParseTrustedProxies(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, fmt.Errorf("empty item in %q", s)
		}
		if p, err := netip.ParsePrefix(item); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(item)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("%q is neither a CIDR (10.0.0.0/8) nor an IP address", item)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// trusted reports whether a is in one of the prefixes.
func trusted(proxies []netip.Prefix, a netip.Addr) bool {
	for _, p := range proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientAddress returns the address a request comes from: the TCP peer remoteAddr,
// unless it is a trusted proxy; then the rightmost address of forwardedFor (the
// X-Forwarded-For header) that is not a trusted proxy, or the leftmost if all are.
func clientAddress(remoteAddr, forwardedFor string, proxies []netip.Prefix) (netip.Addr, error) {
	peer, err := parseHostAddr(remoteAddr)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("peer address %q: %w", remoteAddr, err)
	}
	if !trusted(proxies, peer) || strings.TrimSpace(forwardedFor) == "" {
		return peer, nil
	}
	hops := strings.Split(forwardedFor, ",")
	var a netip.Addr
	for i := len(hops) - 1; i >= 0; i-- {
		if a, err = parseHostAddr(strings.TrimSpace(hops[i])); err != nil {
			return netip.Addr{}, fmt.Errorf("X-Forwarded-For from trusted proxy %s: %q: %w", peer, strings.TrimSpace(hops[i]), err)
		}
		if !trusted(proxies, a) {
			return a, nil
		}
	}
	return a, nil
}

// parseHostAddr parses "IP", "IP:port", "[IPv6]" or "[IPv6]:port" into an address
// without zone, IPv4-mapped IPv6 addresses turned into IPv4.
func parseHostAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	if err != nil {
		ap, err2 := netip.ParseAddrPort(s)
		if err2 != nil {
			return netip.Addr{}, fmt.Errorf("not an IP address")
		}
		a = ap.Addr()
	}
	return a.WithZone("").Unmap(), nil
}

// nodeHasAddress reports whether a is one of the IP addresses in the node's
// status.addresses, whatever their type; non-IP entries (Hostname) are skipped.
func nodeHasAddress(n *corev1.Node, a netip.Addr) bool {
	for _, na := range n.Status.Addresses {
		if ip, err := netip.ParseAddr(na.Address); err == nil && ip.WithZone("").Unmap() == a {
			return true
		}
	}
	return false
}
