package natsplug

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func TestReadMsgOfAJetStreamDelivery(t *testing.T) {
	msg, err := ReadMsg(env(map[string]string{
		"NATSPLUG_SUBJECT":           "orders.new",
		"NATSPLUG_REPLY":             "_INBOX.1",
		"NATSPLUG_HEADERS":           `{"trace":["1","2"],"Nats-Msg-Id":["x"]}`,
		"NATSPLUG_STREAM":            "ORDERS",
		"NATSPLUG_CONSUMER":          "pricing",
		"NATSPLUG_STREAM_SEQUENCE":   "7",
		"NATSPLUG_CONSUMER_SEQUENCE": "9",
		"NATSPLUG_DELIVERED":         "2",
		"NATSPLUG_PENDING":           "0",
		"NATSPLUG_TIMESTAMP_NS":      "1700000000000000001",
	}), strings.NewReader("payload\x00\xff"))
	if err != nil {
		t.Fatal(err)
	}
	if msg.Subject != "orders.new" || msg.Reply != "_INBOX.1" || string(msg.Data) != "payload\x00\xff" {
		t.Fatalf("message: %+v", msg)
	}
	if got := msg.Header.Values("trace"); len(got) != 2 || got[0] != "1" || got[1] != "2" {
		t.Fatalf("trace: %q", got)
	}
	if msg.Header.Get("nats-msg-id") != "" || msg.Header.Get("Nats-Msg-Id") != "x" {
		t.Fatal("header names are case-sensitive")
	}
	want := Delivery{"ORDERS", "pricing", 7, 9, 2, 0, time.Unix(0, 1700000000000000001)}
	if *msg.Delivery != want {
		t.Fatalf("delivery: %+v", *msg.Delivery)
	}
}

func TestReadMsgOfACoreMessage(t *testing.T) {
	msg, err := ReadMsg(env(map[string]string{"NATSPLUG_SUBJECT": "a"}), strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	if msg.Delivery != nil || msg.Reply != "" || msg.Header == nil || len(msg.Data) != 0 {
		t.Fatalf("message: %+v", msg)
	}
	msg.Header.Set("k", "v") // never a nil map
}

func TestReadMsgRefusesWhatNatsplugNeverSends(t *testing.T) {
	for _, vars := range []map[string]string{
		{},
		{"NATSPLUG_SUBJECT": "a", "NATSPLUG_HEADERS": `{"k":"not a list"}`},
		{"NATSPLUG_SUBJECT": "a", "NATSPLUG_STREAM": "S", "NATSPLUG_DELIVERED": "-1"},
	} {
		if _, err := ReadMsg(env(vars), strings.NewReader("")); err == nil {
			t.Errorf("%v: no error", vars)
		}
	}
}

func TestWriteOutputsWritesOneFramePerLine(t *testing.T) {
	var buf bytes.Buffer
	err := WriteOutputs(&buf, []Output{
		{Subject: "out.a", Header: Header{"k": {"1", "2"}}, Data: []byte("<é>")},
		{Data: nil},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"subject":"out.a","headers":{"k":["1","2"]},"payload_base64":"PMOpPg=="}` + "\n" +
		`{"payload_base64":null}` + "\n"
	if buf.String() != want {
		t.Fatalf("frames:\n%s\nwant:\n%s", buf.String(), want)
	}
}

func TestRetryIsFoundThroughWrapping(t *testing.T) {
	err := fmt.Errorf("charging: %w", Retry(errors.New("the bank is down")))
	if !IsRetry(err) || err.Error() != "charging: the bank is down" {
		t.Fatalf("%v", err)
	}
	if IsRetry(errors.New("bad input")) || Retry(nil) != nil {
		t.Fatal("not a retry")
	}
}

func TestConfigEnv(t *testing.T) {
	for key, want := range map[string]string{
		"marker":      "NATSPLUG_CONFIG_MARKER",
		"max-size.v2": "NATSPLUG_CONFIG_MAX_SIZE_V2",
		"é=x":         "NATSPLUG_CONFIG___X",
	} {
		if got := ConfigEnv(key); got != want {
			t.Errorf("%q: %q, want %q", key, got, want)
		}
	}
}
