package wire

import (
	"fmt"

	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// StatusError is a refusal received from, or to be sent to, the other side:
// a wire status and its human-readable text. Callers match it with
// errors.As, or compare statuses with errors.Is against a StatusError that
// has only Status set.
type StatusError struct {
	Status pb.Status
	Text   string
}

// Errorf returns a StatusError with a formatted text.
func Errorf(status pb.Status, format string, args ...any) *StatusError {
	return &StatusError{Status: status, Text: fmt.Sprintf(format, args...)}
}

func (e *StatusError) Error() string {
	if e.Text == "" {
		return "balancer: " + e.Status.String()
	}
	return "balancer: " + e.Status.String() + ": " + e.Text
}

// Is reports whether target is a StatusError with the same status, so that
// errors.Is(err, &wire.StatusError{Status: pb.Status_REJECTED}) works.
func (e *StatusError) Is(target error) bool {
	t, ok := target.(*StatusError)
	return ok && t.Status == e.Status
}
