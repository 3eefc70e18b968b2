// Package notify tells people what reboot-manager does to their nodes, as kured's
// notifications do: a message to a chat channel or webhook (any shoutrrr URL: Slack,
// Teams, Matrix, Discord, a generic webhook) when
//
//   - a drain starts (Event DrainStarted),
//   - a drain stays blocked by a PodDisruptionBudget longer than DrainBlockedAfter
//     (DrainBlocked with no DrainSucceeded, DrainFailed or new drain meanwhile),
//   - a drain gives up (DrainFailed),
//   - a node is being replaced, was replaced, or its replacement failed (NodeReplacing,
//     NodeReplaced, ReplacementFailed),
//   - a node is told to reboot, and when its slot is released (back from its reboot,
//     or released otherwise: see its Events): through
//     lock.GrantHooks (Notifier.Hooks).
//
// The Notifier watches the events.k8s.io/v1 Events reboot-manager posts on Nodes, so the
// lock, the drains and the replacer need not know it exists, and only this replica's
// (reportingInstance), so that two replicas do not tell the same thing twice.
//
// A notification never blocks a request or a drain: messages queue (Options.Queue),
// are sent one per Options.Interval on average (golang.org/x/time/rate), and are
// dropped when the queue is full. rebootmanager_notifications_total{result} counts
// sent, failed and dropped messages.
package notify
