// Package access decides who may talk to reboot-manager's FleetLock server. The
// FleetLock protocol has no authentication: without this package anyone who reaches
// the port can ask to reboot any node, or release the lock of a node that is
// rebooting. It provides three mechanisms, each off unless configured:
//
//   - TLS: CertificateFile serves a certificate and key from files and picks up new
//     ones (a cert-manager renewal) without a restart.
//   - HTTP Basic authentication, per group: a credentials file (CredentialsFile)
//     says which user may act for which group.
//   - Source-address verification: a node's requests are accepted only from one of
//     the addresses in its Node's status.addresses.
//
// The last two are checked by Guard, a fleetlock.Locker that wraps another one (the
// lock) and calls it only for requests that pass.
//
// # Glossary
//
//   - Peer: what the FleetLock handler knows of a requester (fleetlock.Peer): the TCP
//     peer address, X-Forwarded-For, Basic credentials.
//   - Credentials file: lines GROUP:USER:BCRYPT_HASH, GROUP being a FleetLock group
//     or "*" for every group. Blank lines and lines starting with # are ignored. A
//     user may appear once per group, with different passwords or the same.
//   - Client address: the address the request comes from. It is the TCP peer, unless
//     the peer is a trusted proxy: then it is the rightmost X-Forwarded-For address
//     that is not a trusted proxy (each proxy appends the address it got the request
//     from, so that one was added by a proxy we trust and names who sent it to that
//     proxy). If the whole chain is trusted proxies, it is the leftmost address.
//   - Trusted proxy: an address range (--trusted-proxies) whose X-Forwarded-For is
//     believed. Any host in it may claim to forward for anyone.
//   - Refusal: a request the Guard turns away, with a reason (a bounded metric label).
//
// # Contract
//
// Guard checks, in this order, and stops at the first failure:
//
//	check        refused when                         reply (status)      reason
//	credentials  no Basic credentials                 unauthorized (401)  no_credentials
//	             unknown user or wrong password       unauthorized (401)  bad_credentials
//	             right password, not for this group   forbidden (403)     wrong_group
//	source       the client address is not one of     forbidden (403)     source_address
//	             the node's status.addresses
//
// A refused request never reaches the wrapped Locker: nothing is claimed, drained or
// released. An ID that matches no node (or several) is not checked against addresses,
// so that it keeps the answer it has without the check (unknown_node, or
// lock_not_held on steady-state) and the guard tells nothing more about which nodes
// exist; but a pre-reboot is still never granted without the check: if the wrapped
// Locker grants such a request (the ID started matching a node in between), the Guard
// answers forbidden instead.
//
// Addresses are compared as IP addresses (an IPv4-mapped IPv6 address equals its IPv4
// address); node addresses that are not IPs (Hostname, DNS names) are ignored: no DNS
// lookups. The node comes from the lock's cache (lock.Lock.Resolve): no API request.
//
// A password check is a bcrypt comparison, deliberately slow (tens of milliseconds).
// Successful checks are remembered for Options.CacheTTL under an HMAC of user,
// password and hash with a key drawn at start (never the password itself), so a fleet
// sharing one credential costs one comparison per TTL. Failed checks are not
// remembered; at most half the CPUs compare at once, so a flood of wrong passwords
// queues instead of taking every core. An unknown user costs a comparison too, so
// the time to answer does not tell whether a user exists.
//
// # Reloading
//
// CredentialsFile and CertificateFile read their files at start (an invalid file is an
// error, naming the line) and check them again on use (a request, a TLS handshake), at
// most once per ReloadOptions.Interval: the files are read and hashed, and parsed only
// when their contents changed. A changed file that is invalid, or a certificate that
// does not match its key (half-way through a rotation), is logged and the previous
// version stays in force until a valid one appears. No goroutine, no fsnotify: it works
// with Kubernetes Secret volumes, whose files are replaced through a symlink swap.
package access
