// Command probe is a hostile Go handler for natsplug's tests: the payload names what it does.
//
//	loop   spins forever (fuel or the deadline must stop it)
//	eat    keeps allocating until the runtime cannot grow its heap (the memory limit)
//	panic  panics (a reject of kind panic)
//	retry  returns an error wrapped by natsplug.Retry (another delivery)
//	fail   returns an error (a reject, with the error as the reason)
//
// Anything else: one output echoing the payload to the output config subject.
package main

import (
	"errors"

	"natsplug.dev/sdk"
)

// eaten keeps every allocation reachable, so the collector cannot give any back.
var eaten [][]byte

func handle(msg *natsplug.Msg) ([]natsplug.Output, error) {
	switch string(msg.Data) {
	case "loop":
		for i := 0; ; i++ {
		}
	case "eat":
		for {
			eaten = append(eaten, make([]byte, 1<<20))
		}
	case "panic":
		var orders map[string]int
		orders["lost"]++ // assignment to entry in nil map
	case "retry":
		return nil, natsplug.Retry(errors.New("the bank is down"))
	case "fail":
		return nil, errors.New("the order has no id")
	}
	subject, _ := natsplug.Config("output")
	return []natsplug.Output{{Subject: subject, Data: msg.Data}}, nil
}

func main() { natsplug.Run(handle) }
