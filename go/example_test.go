package vmta_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	vmta "github.com/vmta/vmta/go"
)

// A reply classified the way the engine's retry policy sees it.
func ExampleClassifyReply() {
	c, err := vmta.ClassifyReply("550 5.1.1 <ann@example.net>: Recipient address rejected: User unknown")
	if err != nil {
		panic(err)
	}
	fmt.Println(c.Reason, c.Kind, c.Action)
	// Output: userunknown hard bounce
}

// Errors wrap the C result code: errors.Is tells them apart.
func ExampleError() {
	_, err := vmta.New(vmta.Options{TOML: "[engine]\nshards = \"many\"\n"})
	var e *vmta.Error
	fmt.Println(errors.Is(err, vmta.ConfigInvalid), errors.As(err, &e) && e.Key != "")
	// Output: true true
}

// Start an engine, submit a message (waiting out a full submission ring for up to a second), read
// events until the message is settled, then shut down.
func ExampleEngine_SubmitContext() {
	e, err := vmta.New(vmta.Options{Path: "vmta.toml"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer e.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	id, err := e.SubmitContext(ctx, vmta.Message{
		Sender:     "news@example.com",
		Recipients: []string{"ann@example.net"},
		Body:       []byte("From: news@example.com\r\nTo: ann@example.net\r\nSubject: Hello\r\n\r\nHello.\r\n"),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	wait, stop := context.WithTimeout(context.Background(), time.Minute)
	defer stop()
	for {
		ev, err := e.NextEvent(wait)
		if err != nil {
			fmt.Println(err)
			return
		}
		if ev.MessageID == id && ev.Kind.Final() {
			fmt.Println(ev.Kind, ev.Recipient, ev.Code)
			break
		}
	}
	_ = e.ShutdownContext(wait)
}
