package pipe

import (
	"testing"
	"unsafe"
)

// TestJoinerSize keeps the one allocation per Join in the 2304-byte malloc
// size class; one byte more and every joined pair pays 384 bytes extra.
func TestJoinerSize(t *testing.T) {
	if size := unsafe.Sizeof(joiner{}); size > 2304 {
		t.Errorf("joiner is %d bytes, over the 2304-byte size class", size)
	}
}
