// Command uppercase is the Go twin of plugins/uppercase: one output, the payload upper-cased
// with strings.ToUpper, published to the subject named by the output config value (default:
// the input subject with ".upper" appended). Input headers are carried over; a marker config
// value is set as the marker header. A payload that is not UTF-8 is rejected.
//
// Upper-casing is Go's own: Unicode's simple case mapping, one rune for one, so "ß" stays "ß"
// where Rust, Python and JavaScript give "SS".
package main

import (
	"errors"
	"strings"
	"unicode/utf8"

	"natsplug.dev/sdk"
)

func handle(msg *natsplug.Msg) ([]natsplug.Output, error) {
	if !utf8.Valid(msg.Data) {
		return nil, errors.New("the payload is not UTF-8")
	}
	subject, ok := natsplug.Config("output")
	if !ok {
		subject = msg.Subject + ".upper"
	}
	out := natsplug.Output{
		Subject: subject,
		Header:  msg.Header.Clone(),
		Data:    []byte(strings.ToUpper(string(msg.Data))),
	}
	if marker, ok := natsplug.Config("marker"); ok {
		out.Header.Set("marker", marker)
	}
	return []natsplug.Output{out}, nil
}

func main() { natsplug.Run(handle) }
