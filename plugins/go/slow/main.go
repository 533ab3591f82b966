// Command slow is the Go twin of plugins/slow: it sleeps as many seconds as the payload says
// (a decimal number), then answers "slept SECONDS" to the output config subject (default
// slow.done), or to the request's reply. The long-handler case: natsplug keeps the message
// alive with progress acks while the program sleeps.
package main

import (
	"fmt"
	"log"
	"strconv"
	"strings"
	"time"

	"natsplug.dev/sdk"
)

func handle(msg *natsplug.Msg) ([]natsplug.Output, error) {
	text := strings.TrimSpace(string(msg.Data))
	secs, err := strconv.ParseFloat(text, 64)
	if err != nil {
		return nil, fmt.Errorf("payload %q is not a number of seconds: %w", text, err)
	}
	log.Printf("sleeping %v s", secs)
	time.Sleep(time.Duration(max(secs, 0) * float64(time.Second)))
	subject, ok := natsplug.Config("output")
	if !ok && msg.Reply == "" {
		subject = "slow.done"
	}
	return []natsplug.Output{{Subject: subject, Data: []byte("slept " + text)}}, nil
}

func main() {
	log.SetFlags(0)
	natsplug.Run(handle)
}
