package fleetlock

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const testMachineID = "1c09ca98649c4c7abc779cd04c96812e"

func TestZincatiID(t *testing.T) {
	for _, in := range []string{
		testMachineID,
		"1c09ca98-649c-4c7a-bc77-9cd04c96812e",
		"1C09CA98649C4C7ABC779CD04C96812E",
		"1C09CA98-649C-4C7A-BC77-9CD04C96812E",
		testMachineID + "\n",
	} {
		got, err := ZincatiID(in)
		require.NoError(t, err, in)
		assert.Equal(t, testID, got, in)
	}
}

func TestZincatiIDInvalid(t *testing.T) {
	for _, in := range []string{"", "1c09ca98649c4c7abc779cd04c96812", testMachineID + "0", testMachineID + "00",
		"1c09ca98649c4c7abc779cd04c96812g", "0x1c09ca98649c4c7abc779cd04c9681", "1c09ca98 649c4c7abc779cd04c96812e"} {
		got, err := ZincatiID(in)
		assert.ErrorIs(t, err, ErrInvalidMachineID, "%q", in)
		assert.Empty(t, got)
	}
}

// TestZincatiIDCommonBugs shows that the two usual mistakes give other IDs.
func TestZincatiIDCommonBugs(t *testing.T) {
	hash := func(key, msg []byte, fixBits bool) string {
		m := hmac.New(sha256.New, key)
		m.Write(msg)
		b := m.Sum(nil)[:16]
		if fixBits {
			b[6] = b[6]&0x0F | 0x40
			b[8] = b[8]&0x3F | 0x80
		}
		return hex.EncodeToString(b)
	}
	key, _ := hex.DecodeString(testMachineID)
	app, _ := hex.DecodeString("de35106b6ec24688b63afddaa156679b")
	require.Equal(t, testID, hash(key, app, true), "reference")
	hexText := hash([]byte(testMachineID), []byte("de35106b6ec24688b63afddaa156679b"), true)
	noBits := hash(key, app, false)
	assert.Equal(t, "d13987b31f464164a54edd7f6fd41e30", hexText)
	assert.Equal(t, "978a225b3d7b50e9acd7ce9b62f68444", noBits)
	got, err := ZincatiID(testMachineID)
	require.NoError(t, err)
	assert.NotEqual(t, hexText, got)
	assert.NotEqual(t, noBits, got)
}
