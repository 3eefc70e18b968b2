// Package access decides who may talk to reboot-manager's FleetLock server. The
// FleetLock protocol has no authentication: without this package anyone who reaches
// the port can ask to reboot any node, or release the lock of a node that is
// rebooting. It provides three mechanisms, each off unless configured:
//
//   - TLS: CertificateFile serves a certificate and key from files and picks up new
//     ones (a cert-manager renewal) without a restart.
//   - HTTP Basic authentication, bound to nodes: a credentials file
//     (CredentialsFile) says which user may act for which nodes (a label selector)
//     and in which groups.
//   - Source-address verification: a node's requests are accepted only from one of
//     the addresses in its Node's status.addresses.
//
// The last two are checked by Guard, a fleetlock.Locker that wraps another one (the
// lock) and calls it only for requests that pass. The Guard also refuses a request
// whose group differs from the group of the node's current hold: such a
// request neither releases nor re-grants it.
//
// # Glossary
//
//   - Peer: what the FleetLock handler knows of a requester (fleetlock.Peer): the TCP
//     peer address, X-Forwarded-For, Basic credentials.
//   - Credentials file: lines GROUP:USER:BCRYPT_HASH:NODE_SELECTOR, GROUP being a
//     FleetLock group or "*" for every group, NODE_SELECTOR a Kubernetes label
//     selector the request's node must match or "*" for every node. Blank lines
//     and lines starting with # are ignored. A user may have several lines, all
//     with the same hash: one password per user.
//   - Request's node: the Node the request's Zincati ID resolves to
//     (NodeResolver, the lock's cache). Its labels decide which credentials lines
//     apply; its rebootmanager/status and rebootmanager/group annotations tell the
//     group of its hold.
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
//	check        refused when                          reply (status)          reason
//	credentials  no Basic credentials                  unauthorized (401)      no_credentials
//	             unknown user, wrong password, or one  unauthorized (401)      bad_credentials
//	             over 72 bytes (bcrypt reads only 72)
//	             too many password checks waiting      too_many_requests (429) busy
//	             no line of the user for this group    forbidden (403)         wrong_group
//	             no line for this group selects the    forbidden (403)         wrong_node
//	             request's node
//	group        the node holds a slot of another      forbidden (403)         other_group
//	             group than the request's
//	             another group than the request's
//	source       the client address is not one of      forbidden (403)         source_address
//	             the node's status.addresses
//
// A refused request never reaches the wrapped Locker: nothing is claimed, drained or
// released. An ID that matches no node (or several) cannot be checked against node
// selectors, holds or addresses: it is passed on so that it keeps the answer it has
// without the guard (unknown_node, or lock_not_held on steady-state) and the guard
// tells nothing more about which nodes exist; but a pre-reboot is still never granted
// without the checks: if the wrapped Locker grants such a request (the ID started
// matching a node in between), the Guard answers forbidden instead. Without a
// NodeResolver only lines for every node (*) can pass.
//
// The node's labels and lock annotations come from the lock's cache: a label change
// takes effect when the cache sees it, within the watch's latency. The group check
// in the guard is a first refusal from that cache; the lock keeps the same rule on
// its own fresh reads.
//
// Addresses are compared as IP addresses (an IPv4-mapped IPv6 address equals its IPv4
// address); node addresses that are not IPs (Hostname, DNS names) are ignored: no DNS
// lookups. The node comes from the lock's cache (lock.Lock.Resolve): no API request.
//
// A password check is one bcrypt comparison, deliberately slow (tens of
// milliseconds), whoever the user: a user has one password whatever their number of
// lines, and an unknown user's password is compared with a hash of the file at its
// most common cost, so the time to answer does not tell users apart (keep one cost
// for every hash). Successful checks are remembered for Options.CacheTTL under an
// HMAC of user, password and hash with a key drawn at start (never the password
// itself), so a fleet sharing one credential costs one comparison per TTL; a
// remembered success never waits, and requests with the same credentials arriving
// while their check runs wait for it rather than compare again. Failed checks are
// not remembered. At most half the
// CPUs compare at once and at most Options.MaxQueuedChecks more wait: past that a
// check is refused at once (too_many_requests), so a flood of wrong passwords can
// neither take every core nor make valid ones wait for seconds.
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
