package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/multiformats/go-varint"
	"google.golang.org/protobuf/proto"
)

// ErrMessageTooLarge is returned by ReadMsg for a message over
// MaxMessageSize; the peer then gets MALFORMED_MESSAGE.
var ErrMessageTooLarge = errors.New("message larger than 16 KiB")

// ErrMalformed wraps every decoding failure of ReadMsg, so that a handler can
// tell a bad message (answer MALFORMED_MESSAGE) from a broken stream (give up).
var ErrMalformed = errors.New("malformed message")

// Reader reads length-prefixed protobuf messages without reading a single
// byte past the message it returns.
//
// Raw stream bytes follow the handshake on a forward stream, so a buffered
// reader (go-msgio's pbio wraps the stream in a bufio.Reader) would swallow
// forwarded data. Reading the varint byte by byte costs a few extra Read
// calls per handshake, which is nothing against a stream's lifetime.
type Reader struct {
	r   io.Reader
	one [1]byte
	buf []byte
}

// NewReader returns a Reader on r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// ReadByte implements io.ByteReader for varint decoding.
func (d *Reader) ReadByte() (byte, error) {
	if _, err := io.ReadFull(d.r, d.one[:]); err != nil {
		return 0, err
	}
	return d.one[0], nil
}

// ReadMsg reads one message into msg. A message over MaxMessageSize or one
// that does not decode returns an error wrapping ErrMalformed; a stream that
// ends or fails mid-message returns that stream error (io.EOF only when the
// stream ended cleanly before the first byte).
func (d *Reader) ReadMsg(msg proto.Message) error {
	n, err := varint.ReadUvarint(d)
	if err != nil {
		if errors.Is(err, varint.ErrOverflow) || errors.Is(err, varint.ErrNotMinimal) {
			return fmt.Errorf("%w: bad length prefix: %v", ErrMalformed, err)
		}
		return err
	}
	if n > MaxMessageSize {
		return fmt.Errorf("%w: %w (%d bytes)", ErrMalformed, ErrMessageTooLarge, n)
	}
	if cap(d.buf) < int(n) {
		d.buf = make([]byte, n, max(int(n), 256))
	}
	buf := d.buf[:n]
	if _, err := io.ReadFull(d.r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	if err := proto.Unmarshal(buf, msg); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

// WriteMsg writes msg with its length prefix in a single Write, so that a
// handshake message never goes out as two packets.
func WriteMsg(w io.Writer, msg proto.Message) error {
	size := proto.Size(msg)
	buf := binary.AppendUvarint(make([]byte, 0, binary.MaxVarintLen64+size), uint64(size))
	buf, err := proto.MarshalOptions{}.MarshalAppend(buf, msg)
	if err != nil {
		return err
	}
	_, err = w.Write(buf)
	return err
}

// Stream is the part of a libp2p stream that WriteFinal needs.
type Stream interface {
	io.Writer
	SetWriteDeadline(time.Time) error
	Close() error
	Reset() error
}

// finalWriteTimeout bounds the write of a final response, so that a peer
// that does not read cannot hold the handler.
const finalWriteTimeout = 5 * time.Second

// WriteFinal writes a last response (a refusal) and closes the stream both
// ways. It closes rather than resets: a reset discards data the peer has not
// read yet, in yamux and in QUIC alike, and would take the response with it.
// The peer's further writes fail as they would after a reset.
func WriteFinal(s Stream, msg proto.Message) {
	_ = s.SetWriteDeadline(time.Now().Add(finalWriteTimeout))
	if err := WriteMsg(s, msg); err != nil {
		s.Reset()
		return
	}
	s.Close()
}
