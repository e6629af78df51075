package pipe

import (
	"testing"
	"unsafe"
)

// TestJoinerSize keeps the one allocation per Join in the 1280-byte malloc
// size class; one byte more and every joined pair pays 256 bytes extra.
func TestJoinerSize(t *testing.T) {
	if size := unsafe.Sizeof(joiner{}); size > 1280 {
		t.Errorf("joiner is %d bytes, over the 1280-byte size class", size)
	}
}
