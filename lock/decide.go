package lock

import "slices"

// verdict is what the check decides for a claim.
type verdict int

const (
	promote    verdict = iota // a slot is ours
	awaitLater                // only later claimants stand in the way; they will withdraw
	withdraw                  // holders and earlier claimants take every slot
)

// decide is the lock's rule, given the other nodes of the group that claim or hold:
// H holding, L claiming with a name before ours, G claiming after.
// H+L >= slots: withdraw; H+L+G >= slots: wait; otherwise promote.
func decide(name, group string, slots int, others map[string]nodeLock) (verdict, *HeldError) {
	held := &HeldError{Group: group, Slots: slots}
	later := 0
	for other, st := range others {
		switch {
		case st.State == StateRebooting:
			held.Holders = append(held.Holders, other)
		case st.State != StateClaiming:
		case other < name:
			held.Ahead = append(held.Ahead, other)
		default:
			later++
		}
	}
	slices.Sort(held.Holders)
	slices.Sort(held.Ahead)
	taken := len(held.Holders) + len(held.Ahead)
	switch {
	case taken >= slots:
		return withdraw, held
	case taken+later >= slots:
		return awaitLater, held
	default:
		return promote, held
	}
}
