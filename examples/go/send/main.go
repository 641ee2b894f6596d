// send submits one message with the vmta Go module and prints each recipient's final outcome.
//
//	go run . CONFIG.toml SENDER RECIPIENT...
//
// Build it after `make install` (see go/ and the README): PKG_CONFIG_PATH must find vmta.pc.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	vmta "github.com/vmta/vmta/go"
)

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: send CONFIG.toml SENDER RECIPIENT...")
		os.Exit(2)
	}
	e, err := vmta.New(vmta.Options{Path: os.Args[1]})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer e.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sender, rcpts := os.Args[2], os.Args[3:]
	body := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: Hello from Go\r\n\r\nHello.\r\n", sender, rcpts[0])
	id, err := e.SubmitContext(ctx, vmta.Message{Sender: sender, Recipients: rcpts, Body: []byte(body)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for left := len(rcpts); left > 0; {
		ev, err := e.NextEvent(ctx)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if ev.MessageID == id && ev.Kind.Final() {
			fmt.Printf("%s %016x %s %d %s\n", ev.Kind, id, ev.Recipient, ev.Code, ev.Text)
			left--
		}
	}
	_ = e.ShutdownContext(ctx)
}
