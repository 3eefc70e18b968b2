package fleetlock

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// zincatiAppID is Zincati's systemd application ID
// (de35106b6ec24688b63afddaa156679b) as raw bytes.
var zincatiAppID = []byte{0xde, 0x35, 0x10, 0x6b, 0x6e, 0xc2, 0x46, 0x88, 0xb6, 0x3a, 0xfd, 0xda, 0xa1, 0x56, 0x67, 0x9b}

// ErrInvalidMachineID is wrapped by ZincatiID's errors.
var ErrInvalidMachineID = errors.New("machine id must be 32 hex digits")

// ZincatiID derives the client ID Zincati sends from a node's machine ID, as
// systemd's sd_id128_get_machine_app_specific does: HMAC-SHA256 keyed with the
// 16 machine-ID bytes over the 16 app-ID bytes, first 16 bytes, UUIDv4 version
// and variant bits set, as 32 lowercase hex digits. machineID may be in the
// /etc/machine-id form or the kubelet's node.status.nodeInfo.machineID form:
// surrounding spaces, dashes and upper case are accepted.
func ZincatiID(machineID string) (string, error) {
	norm := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(machineID), "-", ""))
	key, err := hex.DecodeString(norm)
	if err != nil || len(key) != 16 {
		return "", fmt.Errorf("fleetlock: %q: %w", machineID, ErrInvalidMachineID)
	}
	m := hmac.New(sha256.New, key)
	m.Write(zincatiAppID)
	b := m.Sum(nil)[:16]
	b[6] = b[6]&0x0F | 0x40
	b[8] = b[8]&0x3F | 0x80
	return hex.EncodeToString(b), nil
}
