// Package natsplug writes natsplug handlers in Go.
//
// A Go handler is a program built with the standard toolchain for WASI preview 1
// (GOOS=wasip1 GOARCH=wasm) that natsplug runs once per message, on its command contract:
// the message arrives on standard input and in the environment, the outputs leave on standard
// output, and the exit status is the outcome. This package is that contract in Go's terms.
// A handler's main is one line:
//
//	func main() { natsplug.Run(handle) }
//
//	func handle(msg *natsplug.Msg) ([]natsplug.Output, error) {
//		return []natsplug.Output{{Data: bytes.ToUpper(msg.Data)}}, nil
//	}
//
// A nil error acks the message once every output is stored; an error wrapped by [Retry] puts
// it back for another delivery after the manifest's backoff; any other error rejects it (the
// dead letter, then a term), with the error's text as the reason. A panic is a reject too, of
// kind panic. What the program logs (the log package, or anything on standard error) is the
// plugin's log.
//
// The sandbox is natsplug's: no network, no files and no environment beyond what the
// manifest grants; fuel, memory and the deadline bound each run.
package natsplug

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"
)

// ExitRetry is the exit status that asks for another delivery (EX_TEMPFAIL of sysexits.h).
const ExitRetry = 75

// Header holds a message's headers: each name, exactly as sent (NATS header names are
// case-sensitive), to its values in order.
type Header map[string][]string

// Get returns the first value of key, or "".
func (h Header) Get(key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Values returns every value of key.
func (h Header) Values(key string) []string { return h[key] }

// Add appends value to key's values.
func (h Header) Add(key, value string) { h[key] = append(h[key], value) }

// Set makes value key's only value.
func (h Header) Set(key, value string) { h[key] = []string{value} }

// Del removes key.
func (h Header) Del(key string) { delete(h, key) }

// Clone returns a copy of h that shares nothing with it; never nil.
func (h Header) Clone() Header {
	c := make(Header, len(h))
	for k, v := range h {
		c[k] = append([]string(nil), v...)
	}
	return c
}

// Delivery is what JetStream says of a delivery.
type Delivery struct {
	Stream           string
	Consumer         string
	StreamSequence   uint64
	ConsumerSequence uint64
	// Delivered counts the deliveries of this message: 1 the first time.
	Delivered uint64
	// Pending is how many messages the consumer has left after this one.
	Pending   uint64
	Timestamp time.Time
}

// Msg is the message being handled.
type Msg struct {
	Subject string
	// Reply is the subject a request waits on, or "".
	Reply  string
	Header Header
	Data   []byte
	// Delivery is nil for a core NATS message.
	Delivery *Delivery
}

// Output is a message to publish. An empty Subject sends it to the manifest's [config]
// output subject or, when there is none, answers the request. natsplug checks every output
// against the plugin's grant before it publishes it.
type Output struct {
	Subject string
	Header  Header
	Data    []byte
}

// Handler handles one message.
type Handler func(msg *Msg) ([]Output, error)

type retryError struct{ err error }

func (e retryError) Error() string { return e.err.Error() }
func (e retryError) Unwrap() error { return e.err }

// Retry wraps err so that the message goes back for another delivery instead of being
// rejected. Retry(nil) is nil.
func Retry(err error) error {
	if err == nil {
		return nil
	}
	return retryError{err}
}

// IsRetry reports whether err asks for another delivery.
func IsRetry(err error) bool {
	var r retryError
	return errors.As(err, &r)
}

// Config returns the manifest's [config] value for key, and whether it is set.
func Config(key string) (string, bool) { return os.LookupEnv(ConfigEnv(key)) }

// ConfigEnv is the environment variable natsplug sets for [config] key: NATSPLUG_CONFIG_ and
// the key upper-cased, every character but an ASCII letter or digit made '_'.
func ConfigEnv(key string) string {
	name := []byte("NATSPLUG_CONFIG_")
	for _, r := range key {
		switch {
		case 'a' <= r && r <= 'z':
			name = append(name, byte(r-'a'+'A'))
		case 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
			name = append(name, byte(r))
		default:
			name = append(name, '_')
		}
	}
	return string(name)
}

// Run reads the message, calls h, writes its outputs and exits with the status its error
// means. It does not return.
func Run(h Handler) {
	msg, err := ReadMsg(os.LookupEnv, os.Stdin)
	if err != nil {
		exit(err)
	}
	outputs, err := h(msg)
	if err != nil {
		exit(err)
	}
	if err := WriteOutputs(os.Stdout, outputs); err != nil {
		exit(err)
	}
	os.Exit(0)
}

// exit writes err as the last line of standard error (natsplug's reason) and exits.
func exit(err error) {
	fmt.Fprintln(os.Stderr, err)
	if IsRetry(err) {
		os.Exit(ExitRetry)
	}
	os.Exit(1)
}

// ReadMsg reads a message the way natsplug hands it over: its environment (through lookup)
// and its payload (all of stdin).
func ReadMsg(lookup func(string) (string, bool), stdin io.Reader) (*Msg, error) {
	subject, ok := lookup("NATSPLUG_SUBJECT")
	if !ok {
		return nil, errors.New("natsplug: NATSPLUG_SUBJECT is not set: is this program run by natsplug?")
	}
	msg := &Msg{Subject: subject, Header: Header{}}
	msg.Reply, _ = lookup("NATSPLUG_REPLY")
	if raw, ok := lookup("NATSPLUG_HEADERS"); ok {
		if err := json.Unmarshal([]byte(raw), &msg.Header); err != nil {
			return nil, fmt.Errorf("natsplug: NATSPLUG_HEADERS: %w", err)
		}
	}
	if stream, ok := lookup("NATSPLUG_STREAM"); ok {
		d := &Delivery{Stream: stream}
		d.Consumer, _ = lookup("NATSPLUG_CONSUMER")
		var ns uint64
		for _, f := range []struct {
			name string
			into *uint64
		}{
			{"NATSPLUG_STREAM_SEQUENCE", &d.StreamSequence},
			{"NATSPLUG_CONSUMER_SEQUENCE", &d.ConsumerSequence},
			{"NATSPLUG_DELIVERED", &d.Delivered},
			{"NATSPLUG_PENDING", &d.Pending},
			{"NATSPLUG_TIMESTAMP_NS", &ns},
		} {
			v, _ := lookup(f.name)
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("natsplug: %s: %w", f.name, err)
			}
			*f.into = n
		}
		d.Timestamp = time.Unix(0, int64(ns))
		msg.Delivery = d
	}
	data, err := io.ReadAll(stdin)
	if err != nil {
		return nil, fmt.Errorf("natsplug: reading the payload: %w", err)
	}
	msg.Data = data
	return msg, nil
}

// frame is one output as a line of standard output.
type frame struct {
	Subject string `json:"subject,omitempty"`
	Header  Header `json:"headers,omitempty"`
	// encoding/json writes bytes as standard, padded base64: what payload_base64 holds.
	Data []byte `json:"payload_base64"`
}

// WriteOutputs writes outputs to w as natsplug's output frames, one JSON object per line.
func WriteOutputs(w io.Writer, outputs []Output) error {
	enc := json.NewEncoder(w)
	for _, out := range outputs {
		if err := enc.Encode(frame{out.Subject, out.Header, out.Data}); err != nil {
			return fmt.Errorf("natsplug: writing an output: %w", err)
		}
	}
	return nil
}
