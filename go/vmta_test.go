package vmta

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// world is the loopback mail world of real peers (examples/peers/mailworld.py: dnsmasq and Postfix
// smtp-sink) on 127.0.70.40-43 (VMTA_GO_WORLD_IP moves it), started once for the package's tests.
var world struct {
	DNS  string `json:"dns"`
	Port int    `json:"port"`
	Dump string `json:"dump"`
	TOML string `json:"toml"`
}

func TestMain(m *testing.M) {
	base := os.Getenv("VMTA_GO_WORLD_IP")
	if base == "" {
		base = "127.0.70.40"
	}
	cmd := exec.Command("python3", filepath.Join("..", "examples", "peers", "mailworld.py"), base)
	out, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot start the mail world:", err)
		os.Exit(1)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err == nil {
		err = json.Unmarshal([]byte(line), &world)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "the mail world did not start (dnsmasq and smtp-sink installed? run .ci/deps):", err)
		_ = cmd.Process.Kill()
		os.Exit(1)
	}
	code := m.Run()
	_ = cmd.Process.Signal(os.Interrupt)
	_ = cmd.Wait()
	os.Exit(code)
}

func config(t testing.TB, extra string) string {
	return fmt.Sprintf("[engine]\nshards = 2\npin_shards = false\ndurability = \"none\"\nspool_dir = %q\nspool_segment_mb = 2\n[retry]\nmax_age_s = 3\n%s%s",
		filepath.Join(t.TempDir(), "spool"), world.TOML, extra)
}

func body(subject, to string) []byte {
	return []byte("From: <sender@vmta.test>\r\nTo: <" + to + ">\r\nSubject: " + subject + "\r\n\r\nHello from Go.\r\n")
}

// finals reads events until each id has `want[id]` final events.
func finals(t *testing.T, e *Engine, want map[uint64]int) []Event {
	t.Helper()
	var got []Event
	timeout := time.After(30 * time.Second)
	for len(want) > 0 {
		select {
		case ev, ok := <-e.Events():
			if !ok {
				t.Fatalf("events closed early; still waiting for %v", want)
			}
			got = append(got, ev)
			if ev.Kind.Final() && want[ev.MessageID] > 0 {
				want[ev.MessageID]--
				if want[ev.MessageID] == 0 {
					delete(want, ev.MessageID)
				}
			}
		case <-timeout:
			t.Fatalf("no final events for %v; got %+v", want, got)
		}
	}
	return got
}

func received(needle string) bool {
	files, _ := os.ReadDir(world.Dump)
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(world.Dump, f.Name()))
		if err == nil && strings.Contains(string(b), "\nReceived: ") && strings.Contains(string(b), needle) {
			return true
		}
	}
	return false
}

func TestVersion(t *testing.T) {
	if Version() != "0.1.0" || HeaderVersion != 100 {
		t.Fatalf("library %s, header %d", Version(), HeaderVersion)
	}
}

func TestDeliveredBouncedAndExpiredFromARealSink(t *testing.T) {
	e, err := New(Options{TOML: config(t, "")})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ok, err := e.Submit(Message{Sender: "sender@vmta.test", Recipients: []string{"go-ok@ok.ffi.test"},
		Body: body("go delivered", "go-ok@ok.ffi.test"), Tags: map[string]string{"lang": "go"}})
	if err != nil {
		t.Fatal(err)
	}
	bad, err := e.Submit(Message{Sender: "sender@vmta.test", Recipients: []string{"go-bad@bad.ffi.test"}, Body: body("go bounced", "x@y")})
	if err != nil {
		t.Fatal(err)
	}
	later, err := e.Submit(Message{Sender: "sender@vmta.test", Recipients: []string{"go-later@later.ffi.test"}, Body: body("go later", "x@y")})
	if err != nil {
		t.Fatal(err)
	}
	events := finals(t, e, map[uint64]int{ok: 1, bad: 1, later: 1})
	seen := map[string]Event{}
	for _, ev := range events {
		seen[fmt.Sprintf("%d/%s", ev.MessageID, ev.Kind)] = ev
	}
	d, found := seen[fmt.Sprintf("%d/delivered", ok)]
	if !found || d.Code != 250 || d.Recipient != "go-ok@ok.ffi.test" || d.Tags["lang"] != "go" || d.IP != okIP() {
		t.Fatalf("delivered event: %+v (all: %+v)", d, events)
	}
	b, found := seen[fmt.Sprintf("%d/bounced", bad)]
	if !found || b.Code < 500 || b.Code > 599 || b.Phase != "rcpt" || b.Reason == "" {
		t.Fatalf("bounced event: %+v", b)
	}
	if d, found := seen[fmt.Sprintf("%d/deferred", later)]; !found || d.Code < 400 || d.Code > 499 || d.NextAttempt.IsZero() {
		t.Fatalf("deferred event: %+v", d)
	}
	if _, found := seen[fmt.Sprintf("%d/expired", later)]; !found {
		t.Fatalf("no expired event: %+v", events)
	}
	s, err := e.Stats()
	if err != nil || s.Submitted != 3 || s.Delivered != 1 || s.Bounced != 1 || s.Expired != 1 {
		t.Fatalf("stats %+v %v", s, err)
	}
	if p, err := e.Prometheus(); err != nil || !strings.Contains(p, "vmta_bounced_total") {
		t.Fatalf("prometheus: %v", err)
	}
	if !received("Subject: go delivered") {
		t.Fatal("the sink did not receive the message")
	}
}

// submitFromGoroutines submits 8×25 messages from 8 goroutines with submit (one recipient each,
// prefix naming them), then checks that every id is distinct and, once flush has run, that every
// message was delivered.
func submitFromGoroutines(t *testing.T, e *Engine, prefix string, submit func(Message) (uint64, error), flush func() error) {
	t.Helper()
	const goroutines, each = 8, 25
	ids := make(chan uint64, goroutines*each)
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				rcpt := fmt.Sprintf("%s%d-%d@ok.ffi.test", prefix, g, i)
				id, err := submit(Message{Sender: "sender@vmta.test", Recipients: []string{rcpt}, Body: body("go "+prefix, rcpt), Bulk: g%2 == 0})
				if err != nil {
					t.Error(err)
					return
				}
				ids <- id
			}
		}(g)
	}
	wg.Wait()
	close(ids)
	if err := flush(); err != nil {
		t.Fatal(err)
	}
	want := map[uint64]int{}
	for id := range ids {
		want[id] = 1
	}
	if len(want) != goroutines*each {
		t.Fatalf("%d distinct ids", len(want))
	}
	for _, ev := range finals(t, e, want) {
		if ev.Kind != Delivered {
			t.Fatalf("%+v", ev)
		}
	}
}

func TestConcurrentSubmitters(t *testing.T) {
	e, err := New(Options{TOML: config(t, "")})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	submitFromGoroutines(t, e, "g", e.Submit, func() error { return nil })
}

func TestSubmitNowaitFromManyGoroutinesThenFlush(t *testing.T) {
	e, err := New(Options{TOML: config(t, "")})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	submitFromGoroutines(t, e, "nowait", e.SubmitNowait, func() error { return e.Flush(30 * time.Second) })
	if _, err := e.SubmitNowait(Message{Sender: "sender@vmta.test", Body: body("x", "x@ok.ffi.test")}); !errors.Is(err, InvalidMessage) {
		t.Fatalf("no recipients: %v", err)
	}
}

func TestRecoveryReportsWhatARestartFound(t *testing.T) {
	toml := config(t, "")
	e, err := New(Options{TOML: toml})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := e.Recovery(); err != nil || r.Messages != 0 || r.Recipients != 0 {
		t.Fatalf("a new spool: %+v %v", r, err)
	}
	// later.ffi.test defers: the messages are still queued when the engine stops.
	for i := 0; i < 4; i++ {
		rcpt := fmt.Sprintf("go-keep%d@later.ffi.test", i)
		if _, err := e.Submit(Message{Sender: "sender@vmta.test", Recipients: []string{rcpt}, Body: body("keep", rcpt)}); err != nil {
			t.Fatal(err)
		}
	}
	e.Shutdown(500 * time.Millisecond)
	e.Close()
	e, err = New(Options{TOML: toml})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	r, err := e.Recovery()
	if err != nil || r.Messages != 4 || r.Recipients != 4 || r.Records < 4 || r.CorruptRecords != 0 {
		t.Fatalf("after a restart: %+v %v", r, err)
	}
	// The first event says so too.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ev, err := e.NextEvent(ctx)
	if err != nil || ev.Kind != Recovered || ev.MessageID != 0 || ev.Tags["messages"] != "4" {
		t.Fatalf("first event after a restart: %+v %v", ev, err)
	}
}

func TestRefusalsAreTypedErrors(t *testing.T) {
	e, err := New(Options{TOML: config(t, "[[tenant]]\nname = \"acme\"\npool = \"default\"\nsender_domains = [\"acme.example\"]\n")})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	msg := Message{Sender: "news@acme.example", Recipients: []string{"x@ok.ffi.test"}, Tenant: "acme",
		Body: []byte("From: news@acme.example\r\nTo: x@ok.ffi.test\r\nSubject: t\r\n\r\nhi\r\n")}
	try := func(m Message, want Result) {
		t.Helper()
		_, err := e.Submit(m)
		if !errors.Is(err, want) {
			t.Fatalf("want %v, got %v", want, err)
		}
	}
	m := msg
	m.Recipients = nil
	try(m, InvalidMessage)
	m = msg
	m.Tenant = "ghost"
	try(m, UnknownTenant)
	m = msg
	m.Sender = "news@elsewhere.example"
	try(m, SenderNotApproved)
	m = msg
	m.Recipients = []string{"\xff@ok.ffi.test"}
	try(m, InvalidUTF8)
	m = msg
	m.Body = make([]byte, 64<<20+1)
	try(m, TooLarge)
	if err := e.SetTenantLocked("acme", true); err != nil {
		t.Fatal(err)
	}
	try(msg, AccountLocked)
	if err := e.SetTenantLocked("acme", false); err != nil {
		t.Fatal(err)
	}
	if err := e.SetTenantLocked("ghost", true); !errors.Is(err, UnknownTenant) {
		t.Fatal(err)
	}
	_, err = e.Submit(Message{Sender: "news@acme.example", Recipients: []string{"x@ok.ffi.test"}, Tenant: "acme", Body: []byte("no header")})
	var verr *Error
	if !errors.As(err, &verr) || verr.Code != InvalidMessage || verr.Message == "" {
		t.Fatalf("%#v", err)
	}
	id, err := e.Submit(msg)
	if err != nil {
		t.Fatal(err)
	}
	finals(t, e, map[uint64]int{id: 1})
	if err := e.Shutdown(time.Second); err != nil {
		t.Fatal(err)
	}
	try(msg, ShuttingDown)
	for range e.Events() {
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	try(msg, InvalidHandle)
	if err := e.Close(); err != nil {
		t.Fatal("second close:", err)
	}
}

func TestConfigurationErrorsNameTheKey(t *testing.T) {
	_, err := New(Options{TOML: "[delivery]\nport = \"x\"\n"})
	var verr *Error
	if !errors.As(err, &verr) || verr.Code != ConfigInvalid || verr.Key != "delivery.port" {
		t.Fatalf("%#v", err)
	}
	_, err = New(Options{Durability: "sometimes"})
	if !errors.Is(err, InvalidArgument) {
		t.Fatal(err)
	}
	_, err = New(Options{SpoolDir: t.TempDir(), SpoolSegmentMB: 5000})
	if !errors.Is(err, InvalidArgument) {
		t.Fatal(err)
	}
}

func TestCloseWithUnreadEventsDoesNotHang(t *testing.T) {
	e, err := New(Options{TOML: config(t, ""), EventBuffer: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if _, err := e.Submit(Message{Sender: "s@vmta.test", Recipients: []string{"u@bad.ffi.test"}, Body: body("unread", "u@bad.ffi.test")}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	done := make(chan error)
	go func() { done <- e.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung")
	}
}

func TestClassifyReply(t *testing.T) {
	c, err := ClassifyReply("550 5.1.1 <a@b.example>: Recipient address rejected: User unknown")
	if err != nil || c.Reason != "userunknown" || c.Action != "bounce" || c.Kind != "hard" {
		t.Fatalf("%+v %v", c, err)
	}
	if _, err := ClassifyReply(""); !errors.Is(err, InvalidArgument) {
		t.Fatal(err)
	}
}

// okIP is the address of the world's accepting sink (the one after the DNS server's).
func okIP() string {
	host := strings.Split(world.DNS, ":")[0]
	parts := strings.Split(host, ".")
	last, _ := strconv.Atoi(parts[3])
	return strings.Join(append(parts[:3], strconv.Itoa(last+1)), ".")
}

func TestSuppressionAndLateReports(t *testing.T) {
	e, err := New(Options{TOML: config(t, "")})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.Suppress("", "go-gone@ok.ffi.test", "", "userunknown", time.Time{}); err != nil {
		t.Fatal(err)
	}
	if s, err := e.Suppressed("", "GO-GONE@ok.ffi.test", ""); err != nil || s == nil || s.Reason != "userunknown" || s.Source != "manual" {
		t.Fatalf("check: %+v %v", s, err)
	}
	_, err = e.Submit(Message{Sender: "sender@vmta.test", Recipients: []string{"go-gone@ok.ffi.test"}, Body: body("go suppressed", "x@y")})
	if !errors.Is(err, Suppressed) {
		t.Fatalf("want Suppressed, got %v", err)
	}
	id, err := e.Submit(Message{Sender: "sender@vmta.test", Recipients: []string{"go-fine@ok.ffi.test"}, Body: body("go fine", "go-fine@ok.ffi.test")})
	if err != nil {
		t.Fatal(err)
	}
	finals(t, e, map[uint64]int{id: 1})
	dsn := "From: MAILER-DAEMON@mx.example\r\nTo: <sender@vmta.test>\r\nSubject: failure\r\n" +
		"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n" +
		"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n" +
		"Final-Recipient: rfc822; go-fine@ok.ffi.test\r\nAction: failed\r\nStatus: 5.1.1\r\n--b--\r\n"
	kind, _, err := e.ApplyReport("", []byte(dsn))
	if err != nil || kind != "dsn" {
		t.Fatalf("apply: %q %v", kind, err)
	}
	timeout := time.After(10 * time.Second)
	for late := false; !late; {
		select {
		case ev := <-e.Events():
			late = ev.Kind == LateBounce && ev.Recipient == "go-fine@ok.ffi.test" && ev.Reason == "userunknown"
		case <-timeout:
			t.Fatal("no late bounce")
		}
	}
	if _, err := e.Submit(Message{Sender: "sender@vmta.test", Recipients: []string{"go-fine@ok.ffi.test"}, Body: body("again", "x@y")}); !errors.Is(err, Suppressed) {
		t.Fatalf("want Suppressed after the late bounce, got %v", err)
	}
	if removed, err := e.Unsuppress("", "go-gone@ok.ffi.test", ""); err != nil || !removed {
		t.Fatalf("unsuppress: %v %v", removed, err)
	}
	if s, _ := e.Stats(); s.Suppressed != 2 {
		t.Fatalf("stats: %+v", s)
	}
}

func TestContextsBoundTheBlockingCalls(t *testing.T) {
	e, err := New(Options{TOML: config(t, "")})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	done, cancel := context.WithCancel(context.Background())
	cancel()
	m := Message{Sender: "sender@vmta.test", Recipients: []string{"ctx@ok.ffi.test"}, Body: body("ctx", "ctx@ok.ffi.test")}
	if _, err := e.SubmitContext(done, m); !errors.Is(err, context.Canceled) {
		t.Fatalf("SubmitContext on an ended context: %v", err)
	}
	short, stop := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer stop()
	if _, err := e.NextEvent(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("NextEvent with nothing queued: %v", err)
	}
	ctx, stop2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer stop2()
	id, err := e.SubmitContext(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := e.NextEvent(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ev.MessageID == id && ev.Kind.Final() {
			if ev.Kind != Delivered {
				t.Fatalf("want delivered, got %v", ev)
			}
			break
		}
	}
	if err := e.ShutdownContext(ctx); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := e.NextEvent(ctx)
		if errors.Is(err, ErrClosed) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.SubmitContext(ctx, m); !errors.Is(err, ShuttingDown) {
		t.Fatalf("SubmitContext after shutdown: %v", err)
	}
}

func TestReloadAppliesRulesAndRefusesABrokenConfig(t *testing.T) {
	cfg := config(t, "")
	e, err := New(Options{TOML: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	// The world's configuration has its [shaping] rules: a domain rule goes in front of them.
	withRule := func(rule string) string {
		return strings.Replace(cfg, "rules = '''\n", "rules = '''\n[[domain]]\ndomains = [\"ok.ffi.test\"]\n"+rule+"\n", 1)
	}
	r, err := e.Reload(Options{TOML: withRule("max_connections = 2")})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Applied) != 1 || r.Applied[0] != "shaping" || len(r.NeedsRestart) != 0 {
		t.Fatalf("report %+v", r)
	}
	_, err = e.Reload(Options{TOML: withRule("message_rate = \"fast\"")})
	var ve *Error
	if !errors.Is(err, ConfigInvalid) || !errors.As(err, &ve) || ve.Key != "shaping.rules" {
		t.Fatalf("broken reload: %v", err)
	}
	r, err = e.Reload(Options{TOML: strings.Replace(cfg, "shards = 2", "shards = 3", 1)})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.NeedsRestart) != 1 || r.NeedsRestart[0] != "engine" {
		t.Fatalf("report %+v", r)
	}
}
