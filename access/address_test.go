package access

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
)

func TestParseTrustedProxies(t *testing.T) {
	got, err := ParseTrustedProxies("10.0.0.0/8, 192.168.1.7 ,fd00::/8,10.1.2.3/16,::ffff:172.16.0.1")
	require.NoError(t, err)
	assert.Equal(t, []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.7/32"),
		netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("172.16.0.1/32"),
	}, got)
	for _, bad := range []string{"", "10.0.0.0/8,", "10.0.0.0/33", "proxy.example", "10.0.0.0/8;10.1.0.0/16", "fe80::1%eth0"} {
		_, err := ParseTrustedProxies(bad)
		assert.Error(t, err, bad)
	}
}

func TestClientAddress(t *testing.T) {
	proxies, err := ParseTrustedProxies("10.1.0.0/16,fd00:1::/32")
	require.NoError(t, err)
	for _, tt := range []struct {
		name, remote, xff, want string
	}{
		{"direct", "192.0.2.7:4000", "", "192.0.2.7"},
		{"direct ignores forwarded-for", "192.0.2.7:4000", "10.0.0.5", "192.0.2.7"},
		{"direct IPv6", "[2001:db8::7]:4000", "", "2001:db8::7"},
		{"IPv4-mapped", "[::ffff:192.0.2.7]:4000", "", "192.0.2.7"},
		{"trusted proxy, no header", "10.1.0.2:4000", "", "10.1.0.2"},
		{"trusted proxy", "10.1.0.2:4000", "10.0.0.5", "10.0.0.5"},
		{"rightmost untrusted", "10.1.0.2:4000", "203.0.113.9, 10.0.0.5, 10.1.0.3", "10.0.0.5"},
		{"spoofed left part ignored", "10.1.0.2:4000", "10.0.0.5, 10.0.0.6", "10.0.0.6"},
		{"all trusted: leftmost", "10.1.0.2:4000", "10.1.0.9, 10.1.0.3", "10.1.0.9"},
		{"ports and brackets", "[fd00:1::2]:4000", "[2001:db8::9]:555, 10.0.0.5:1234", "10.0.0.5"},
		{"bracketed IPv6 without port", "[fd00:1::2]:4000", "[2001:db8::9]", "2001:db8::9"},
		{"garbage left of the answer", "10.1.0.2:4000", "unknown, 10.0.0.5", "10.0.0.5"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := clientAddress(tt.remote, tt.xff, proxies)
			require.NoError(t, err)
			assert.Equal(t, netip.MustParseAddr(tt.want), got)
		})
	}
	for _, tt := range []struct{ remote, xff string }{
		{"", ""},
		{"not-an-ip:80", ""},
		{"10.1.0.2:4000", "10.0.0.5, unknown"},
		{"10.1.0.2:4000", "10.0.0.5,"},
		{"10.1.0.2:4000", "node-a.example"},
	} {
		_, err := clientAddress(tt.remote, tt.xff, proxies)
		assert.Error(t, err, "%q %q", tt.remote, tt.xff)
	}
}

func TestNodeHasAddress(t *testing.T) {
	n := &corev1.Node{Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeHostName, Address: "node-a"},
		{Type: corev1.NodeInternalIP, Address: "10.0.0.5"},
		{Type: corev1.NodeExternalIP, Address: "2001:db8::5"},
		{Type: corev1.NodeInternalDNS, Address: "node-a.internal"},
	}}}
	for a, want := range map[string]bool{
		"10.0.0.5": true, "2001:db8::5": true, "10.0.0.6": false, "127.0.0.1": false, "2001:db8::6": false,
	} {
		assert.Equal(t, want, nodeHasAddress(n, netip.MustParseAddr(a)), a)
	}
}
