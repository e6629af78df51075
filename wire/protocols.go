package wire

import (
	"fmt"
)

// ValidateProtocol reports whether p may be routed: it starts with "/", is
// at most MaxProtocolLength bytes, and holds only printable ASCII other than
// space. multistream-select forbids a newline in a protocol name, and the
// rest keeps log lines and metrics labels readable.
func ValidateProtocol(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("empty protocol ID")
	case len(p) > MaxProtocolLength:
		return fmt.Errorf("protocol ID longer than %d bytes", MaxProtocolLength)
	case p[0] != '/':
		return fmt.Errorf("protocol ID %.64q does not start with /", p)
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("protocol ID %.64q has a byte outside printable ASCII at %d", p, i)
		}
	}
	return nil
}
