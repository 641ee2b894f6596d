// Package vmta drives the vmta mail delivery engine through its C ABI (include/vmta.h) with cgo.
//
// Start an engine with New, submit messages with Submit (safe from many goroutines), and read
// delivery events from the channel Events returns. One goroutine per engine feeds that channel: it
// blocks in vmta_engine_wait (outside the Go scheduler's way, in a cgo call) and drains
// vmta_engine_poll_events into Go values. The engine threads never call into Go.
//
// Blocking calls have context-aware forms: SubmitContext waits out a full submission ring until
// the context ends, NextEvent waits for one event, ShutdownContext takes its grace from the
// context's deadline. Errors are *Error values wrapping the C result code: errors.Is(err, vmta.Busy).
//
// Install the C library first (`make install PREFIX=...` in the repository puts libvmta, vmta.h and
// vmta.pc there); the package links it through pkg-config: set PKG_CONFIG_PATH to
// PREFIX/lib/pkgconfig, and CGO_LDFLAGS=-Wl,-rpath,PREFIX/lib (or LD_LIBRARY_PATH) unless PREFIX/lib
// is on the loader's path. Then:
//
//	go get github.com/vmta/vmta/go
package vmta

/*
#cgo pkg-config: vmta
#include <stdlib.h>
#include <string.h>
#include <vmta.h>
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
	"unsafe"
)

// Result is a vmta_result code; codes are never renumbered.
type Result uint32

// The result codes of include/vmta.h.
const (
	OK                Result = C.VMTA_OK
	NullParameter     Result = C.VMTA_NULL_PARAMETER
	InvalidArgument   Result = C.VMTA_INVALID_ARGUMENT
	InvalidUTF8       Result = C.VMTA_INVALID_UTF8
	TooLarge          Result = C.VMTA_TOO_LARGE
	Panic             Result = C.VMTA_PANIC
	InvalidHandle     Result = C.VMTA_INVALID_HANDLE
	ConfigInvalid     Result = C.VMTA_CONFIG
	StartFailed       Result = C.VMTA_START_FAILED
	Busy              Result = C.VMTA_BUSY
	ShuttingDown      Result = C.VMTA_SHUTTING_DOWN
	InvalidMessage    Result = C.VMTA_INVALID_MESSAGE
	UnknownTenant     Result = C.VMTA_UNKNOWN_TENANT
	AccountLocked     Result = C.VMTA_ACCOUNT_LOCKED
	SenderNotApproved Result = C.VMTA_SENDER_NOT_APPROVED
	Suppressed        Result = C.VMTA_SUPPRESSED
	NoSpace           Result = C.VMTA_NO_SPACE
	SpoolError        Result = C.VMTA_SPOOL_ERROR
	NoEvents          Result = C.VMTA_NO_EVENTS
	ConcurrentPoll    Result = C.VMTA_CONCURRENT_POLL
	IOError           Result = C.VMTA_IO
	NotFound          Result = C.VMTA_NOT_FOUND
	ForgedReport      Result = C.VMTA_FORGED_REPORT
	Disabled          Result = C.VMTA_DISABLED
	Timeout           Result = C.VMTA_TIMEOUT
)

// String is the library's description of the code.
func (r Result) String() string { return C.GoString(C.vmta_result_str(C.vmta_result(r))) }

// Error is a failed call: its code, and the library's detail where it gives one.
type Error struct {
	Code    Result
	Key     string // the configuration key at fault, for configuration errors
	Message string
}

func (e *Error) Error() string {
	if e.Message != "" {
		return "vmta: " + e.Message
	}
	return "vmta: " + e.Code.String()
}

// Is lets errors.Is(err, vmta.Busy) and the like work.
func (e *Error) Is(target error) bool {
	var r Result
	switch t := target.(type) {
	case Result:
		r = t
	case *Error:
		r = t.Code
	default:
		return false
	}
	return e.Code == r
}

// Error makes a Result usable as an errors.Is target.
func (r Result) Error() string { return r.String() }

func check(r C.vmta_result, err *C.vmta_error) error {
	if r == C.VMTA_OK {
		return nil
	}
	e := &Error{Code: Result(r)}
	if err != nil {
		e.Message = C.GoString(C.vmta_error_message(err))
		e.Key = C.GoString(C.vmta_error_key(err))
		C.vmta_error_free(err)
	}
	return e
}

// Version is the version of the linked library ("major.minor.patch").
func Version() string {
	n := uint32(C.vmta_version())
	return fmt.Sprintf("%d.%d.%d", n/10000, n/100%100, n%100)
}

// HeaderVersion is the version of the header the package was compiled with, as one number.
const HeaderVersion = C.VMTA_VERSION_NUMBER

// cbytes is a (pointer, length) view of Go bytes for the duration of one cgo call (inputs only:
// vmta copies them before returning; the bytes hold no Go pointers, so passing them is allowed).
func cbytes(b []byte) (*C.uint8_t, C.size_t) {
	if len(b) == 0 {
		return nil, 0
	}
	return (*C.uint8_t)(unsafe.Pointer(&b[0])), C.size_t(len(b))
}

// Options configure an engine: TOML text or a TOML file, then the main options (zero values leave
// the TOML's or the default's value).
type Options struct {
	TOML     string
	Path     string
	SpoolDir string
	// SpoolSegmentMB is the size of a new spool segment file in MiB (1 to 4096).
	SpoolSegmentMB int
	Shards         int
	Durability     string // "sync", "interval", "none"
	Smarthost      string // "host:port", with TLS disabled unless SmarthostTLS says
	// SmarthostTLS: "disabled" (default here), "opportunistic", "required".
	SmarthostTLS string
	Nameservers  []string
	Port         int
	TLS          string // "disabled", "opportunistic", "required"
	// EventBuffer is the capacity of the Events channel (default 1024).
	EventBuffer int
}

var durability = map[string]C.uint32_t{"sync": C.VMTA_DURABILITY_SYNC, "interval": C.VMTA_DURABILITY_INTERVAL, "none": C.VMTA_DURABILITY_NONE}
var tlsPolicy = map[string]C.uint32_t{"disabled": C.VMTA_TLS_DISABLED, "opportunistic": C.VMTA_TLS_OPPORTUNISTIC, "required": C.VMTA_TLS_REQUIRED}

func configure(o *Options) (*C.vmta_config, error) {
	var c *C.vmta_config
	var cerr *C.vmta_error
	switch {
	case o.TOML != "" && o.Path != "":
		return nil, errors.New("vmta: give TOML or Path, not both")
	case o.Path != "":
		p, n := cbytes([]byte(o.Path))
		if err := check(C.vmta_config_from_file(p, n, &c, &cerr), cerr); err != nil {
			return nil, err
		}
	default:
		p, n := cbytes([]byte(o.TOML))
		if err := check(C.vmta_config_from_toml(p, n, &c, &cerr), cerr); err != nil {
			return nil, err
		}
	}
	set := func(r C.vmta_result) error { return check(r, nil) }
	var err error
	if o.SpoolDir != "" && err == nil {
		p, n := cbytes([]byte(o.SpoolDir))
		err = set(C.vmta_config_set_spool_dir(c, p, n))
	}
	if o.SpoolSegmentMB != 0 && err == nil {
		if o.SpoolSegmentMB < 0 || o.SpoolSegmentMB > 4096 {
			err = &Error{Code: InvalidArgument, Message: "spool segment size out of range"}
		} else {
			err = set(C.vmta_config_set_spool_segment_mb(c, C.uint32_t(o.SpoolSegmentMB)))
		}
	}
	if o.Shards != 0 && err == nil {
		err = set(C.vmta_config_set_shards(c, C.uint32_t(o.Shards)))
	}
	if o.Durability != "" && err == nil {
		d, ok := durability[o.Durability]
		if !ok {
			err = &Error{Code: InvalidArgument, Message: "durability " + o.Durability}
		} else {
			err = set(C.vmta_config_set_durability(c, d))
		}
	}
	for _, ns := range o.Nameservers {
		if err == nil {
			p, n := cbytes([]byte(ns))
			err = set(C.vmta_config_add_nameserver(c, p, n))
		}
	}
	if o.Port != 0 && err == nil {
		if o.Port < 0 || o.Port > 65535 {
			err = &Error{Code: InvalidArgument, Message: "port out of range"}
		} else {
			err = set(C.vmta_config_set_port(c, C.uint16_t(o.Port)))
		}
	}
	if o.TLS != "" && err == nil {
		t, ok := tlsPolicy[o.TLS]
		if !ok {
			err = &Error{Code: InvalidArgument, Message: "tls " + o.TLS}
		} else {
			err = set(C.vmta_config_set_tls(c, t))
		}
	}
	if o.Smarthost != "" && err == nil {
		mode := o.SmarthostTLS
		if mode == "" {
			mode = "disabled"
		}
		t, ok := tlsPolicy[mode]
		if !ok {
			err = &Error{Code: InvalidArgument, Message: "smarthost tls " + mode}
		} else {
			p, n := cbytes([]byte(o.Smarthost))
			err = set(C.vmta_config_set_smarthost(c, p, n, t))
		}
	}
	if err != nil {
		C.vmta_config_free(c)
		return nil, err
	}
	return c, nil
}

// EventKind says what happened to a recipient.
type EventKind uint32

// Event kinds.
const (
	Delivered EventKind = C.VMTA_EVENT_DELIVERED
	Deferred  EventKind = C.VMTA_EVENT_DEFERRED
	Bounced   EventKind = C.VMTA_EVENT_BOUNCED
	Expired   EventKind = C.VMTA_EVENT_EXPIRED
	Cancelled EventKind = C.VMTA_EVENT_CANCELLED
	// SuppressedRecipient: not queued, the recipient is on the tenant's suppression list.
	SuppressedRecipient EventKind = C.VMTA_EVENT_SUPPRESSED
	// LateBounce: a DSN reported a failure after the receiving server's 250.
	LateBounce EventKind = C.VMTA_EVENT_LATE_BOUNCE
	// LateDeferral: a DSN reported a delay after the receiving server's 250.
	LateDeferral EventKind = C.VMTA_EVENT_LATE_DEFERRAL
	// Complaint: a spam complaint (ARF); the address is suppressed for every stream of the tenant.
	Complaint EventKind = C.VMTA_EVENT_COMPLAINT
	// Recovered: the engine opened a spool that held mail or damage (once per start; MessageID 0,
	// Text a summary, Tags the counts, as Engine.Recovery reports them).
	Recovered EventKind = C.VMTA_EVENT_RECOVERED
	// Refused: a message queued with SubmitNowait that the spool could not take after its id was
	// returned (a full disk, a write error); nothing is queued for the recipient, Text says why.
	Refused EventKind = C.VMTA_EVENT_REFUSED
)

func (k EventKind) String() string {
	switch k {
	case Delivered:
		return "delivered"
	case Deferred:
		return "deferred"
	case Bounced:
		return "bounced"
	case Expired:
		return "expired"
	case Cancelled:
		return "cancelled"
	case SuppressedRecipient:
		return "suppressed"
	case LateBounce:
		return "late-bounce"
	case LateDeferral:
		return "late-deferral"
	case Complaint:
		return "complaint"
	case Recovered:
		return "recovered"
	case Refused:
		return "refused"
	}
	return fmt.Sprintf("EventKind(%d)", uint32(k))
}

// Final is true when no more delivery events will come for the recipient (an inbound report may
// still give a late bounce, late deferral or complaint after a delivery).
func (k EventKind) Final() bool {
	switch k {
	case Delivered, Bounced, Expired, Cancelled, SuppressedRecipient, Refused:
		return true
	}
	return false
}

// Event is one recipient's outcome of one attempt (copied out of the engine).
type Event struct {
	Kind           EventKind
	MessageID      uint64
	RecipientIndex int
	Recipient      string
	Tenant         string
	Code           int    // SMTP reply code; 0 when no server answered
	Enhanced       string // "5.1.1", or ""
	Text           string
	Phase          string
	Reason         string
	MX             string
	IP             string
	Source         string
	Attempts       int
	NextAttempt    time.Time // for Deferred
	SubmittedAt    time.Time
	At             time.Time
	Tags           map[string]string
}

func gostr(s C.vmta_str) string {
	if s.len == 0 {
		return ""
	}
	return C.GoStringN((*C.char)(unsafe.Pointer(s.ptr)), C.int(s.len))
}

func eventFromC(e *C.vmta_event) Event {
	ev := Event{
		Kind:           EventKind(e.kind),
		MessageID:      uint64(e.message_id),
		RecipientIndex: int(e.recipient_index),
		Recipient:      gostr(e.recipient),
		Tenant:         gostr(e.tenant),
		Code:           int(e.code),
		Text:           gostr(e.text),
		Phase:          gostr(e.phase),
		Reason:         gostr(e.reason),
		MX:             gostr(e.mx),
		IP:             gostr(e.ip),
		Source:         gostr(e.source),
		Attempts:       int(e.attempts),
		SubmittedAt:    time.Unix(int64(e.submitted_at), 0),
		At:             time.UnixMilli(int64(e.at_ms)),
	}
	if e.next_attempt != 0 {
		ev.NextAttempt = time.Unix(int64(e.next_attempt), 0)
	}
	if e.enhanced_class != 0 {
		ev.Enhanced = fmt.Sprintf("%d.%d.%d", e.enhanced_class, e.enhanced_subject, e.enhanced_detail)
	}
	if e.tags_len > 0 {
		ev.Tags = make(map[string]string, int(e.tags_len))
		for _, t := range unsafe.Slice(e.tags, int(e.tags_len)) {
			ev.Tags[gostr(t.key)] = gostr(t.value)
		}
	}
	return ev
}

// Engine is a running delivery engine.
type Engine struct {
	h      *C.vmta_engine
	events chan Event
	quit   chan struct{}
	pumped chan struct{}
	close  sync.Once
	mu     sync.Mutex // guards shut
	shut   bool
}

const pollBatch = 64

// New starts an engine and the goroutine feeding Events.
func New(o Options) (*Engine, error) {
	c, err := configure(&o)
	if err != nil {
		return nil, err
	}
	defer C.vmta_config_free(c)
	var h *C.vmta_engine
	var cerr *C.vmta_error
	if err := check(C.vmta_engine_new(c, &h, &cerr), cerr); err != nil {
		return nil, err
	}
	size := o.EventBuffer
	if size <= 0 {
		size = 1024
	}
	e := &Engine{h: h, events: make(chan Event, size), quit: make(chan struct{}), pumped: make(chan struct{})}
	go e.pump()
	return e, nil
}

// pump is the one consumer of the engine's events: it waits, drains, and sends on the channel,
// which it closes once the engine is shut down and drained (or Close is called).
func (e *Engine) pump() {
	defer close(e.pumped)
	defer close(e.events)
	buf := (*C.vmta_event)(C.malloc(C.size_t(unsafe.Sizeof(C.vmta_event{})) * pollBatch))
	defer C.free(unsafe.Pointer(buf))
	slots := unsafe.Slice(buf, pollBatch)
	for {
		r := C.vmta_engine_wait(e.h, 500)
		for {
			var n C.size_t
			if C.vmta_engine_poll_events(e.h, buf, pollBatch, &n) != C.VMTA_OK || n == 0 {
				break
			}
			for i := 0; i < int(n); i++ {
				// Copy now: the views are valid only until the next poll.
				ev := eventFromC(&slots[i])
				select {
				case e.events <- ev:
				case <-e.quit:
					return
				}
			}
		}
		if r == C.VMTA_SHUTTING_DOWN || r == C.VMTA_INVALID_HANDLE {
			return
		}
		select {
		case <-e.quit:
			return
		default:
		}
	}
}

// Events is the channel of delivery events. It is closed after Shutdown once every event has been
// read, or at Close.
func (e *Engine) Events() <-chan Event { return e.events }

// Message is a message to submit.
type Message struct {
	Sender     string   // envelope sender; "" for <>
	Recipients []string // at least one
	Tenant     string
	Tags       map[string]string
	Body       []byte // header fields and body, CRLF line ends
	Bulk       bool   // bulk priority (default transactional)
}

// Submit queues a message and returns its id once it is durable. Refusals are *Error values
// matching Busy, InvalidMessage, UnknownTenant, AccountLocked, SenderNotApproved, ShuttingDown, ...
// with errors.Is. Safe from many goroutines.
func (e *Engine) Submit(m Message) (uint64, error) {
	return e.submit(m, false)
}

// SubmitNowait queues a message without waiting for the disk: it returns the id once the message
// is handed to the engine, whose group commit makes it durable before delivery (one message per
// call is as fast as a batch). Refusals known at once are returned as by Submit; a refusal of the
// spool afterwards (a full disk) comes as a Refused event per recipient. Flush waits until every
// such message is durable. Safe from many goroutines.
func (e *Engine) SubmitNowait(m Message) (uint64, error) {
	return e.submit(m, true)
}

// Flush waits until every message queued with SubmitNowait (by any goroutine) is durable or
// refused; an *Error matching Timeout when timeout passed first.
func (e *Engine) Flush(timeout time.Duration) error {
	ms := timeout.Milliseconds()
	if ms < 0 {
		ms = 0
	}
	if ms > 0xFFFFFFFF {
		ms = 0xFFFFFFFF
	}
	return check(C.vmta_engine_flush(e.h, C.uint32_t(ms)), nil)
}

func (e *Engine) submit(m Message, nowait bool) (uint64, error) {
	// cgo may not be handed Go memory that holds Go pointers, so the message's arrays and strings go
	// into one C allocation, freed when the call returns (vmta has copied them by then).
	nr, nt := len(m.Recipients), len(m.Tags)
	size := len(m.Sender) + len(m.Tenant) + len(m.Body)
	for _, r := range m.Recipients {
		size += len(r)
	}
	for k, v := range m.Tags {
		size += len(k) + len(v)
	}
	strSize := int(unsafe.Sizeof(C.vmta_str{}))
	tagSize := int(unsafe.Sizeof(C.vmta_tag{}))
	block := C.malloc(C.size_t(nr*strSize + nt*tagSize + size + 1))
	if block == nil {
		return 0, &Error{Code: TooLarge, Message: "out of memory"}
	}
	defer C.free(block)
	rcpts := unsafe.Slice((*C.vmta_str)(block), nr)
	tags := unsafe.Slice((*C.vmta_tag)(unsafe.Add(block, nr*strSize)), nt)
	heap := unsafe.Slice((*byte)(unsafe.Add(block, nr*strSize+nt*tagSize)), size+1)
	at := 0
	put := func(s []byte) C.vmta_str {
		if len(s) == 0 {
			return C.vmta_str{}
		}
		copy(heap[at:], s)
		v := C.vmta_str{ptr: (*C.uint8_t)(unsafe.Pointer(&heap[at])), len: C.size_t(len(s))}
		at += len(s)
		return v
	}
	for i, r := range m.Recipients {
		rcpts[i] = put([]byte(r))
	}
	i := 0
	for k, v := range m.Tags {
		tags[i] = C.vmta_tag{key: put([]byte(k)), value: put([]byte(v))}
		i++
	}
	msg := C.vmta_message{
		sender:         put([]byte(m.Sender)),
		recipients_len: C.size_t(nr),
		tenant:         put([]byte(m.Tenant)),
		tags_len:       C.size_t(nt),
		body:           put(m.Body),
		priority:       C.VMTA_PRIORITY_TRANSACTIONAL,
	}
	if nr > 0 {
		msg.recipients = &rcpts[0]
	}
	if nt > 0 {
		msg.tags = &tags[0]
	}
	if m.Bulk {
		msg.priority = C.VMTA_PRIORITY_BULK
	}
	var id C.uint64_t
	var cerr *C.vmta_error
	var r C.vmta_result
	if nowait {
		r = C.vmta_engine_submit_nowait(e.h, &msg, &id, &cerr)
	} else {
		r = C.vmta_engine_submit(e.h, &msg, &id, &cerr)
	}
	if err := check(r, cerr); err != nil {
		return 0, err
	}
	return uint64(id), nil
}

// SubmitContext is Submit that waits out a full submission ring (Busy), retrying with a growing pause
// (1 ms to 100 ms) until the message is taken, refused for another reason, or ctx ends (its error
// is then returned, wrapping the last Busy).
func (e *Engine) SubmitContext(ctx context.Context, m Message) (uint64, error) {
	pause := time.Millisecond
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		id, err := e.Submit(m)
		if err == nil || !errors.Is(err, Busy) {
			return id, err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-t.C:
		}
		if pause < 100*time.Millisecond {
			pause *= 2
		}
	}
}

// NextEvent waits for the next delivery event until ctx ends. It returns ErrClosed once the
// engine has shut down and every event has been read.
func (e *Engine) NextEvent(ctx context.Context) (Event, error) {
	select {
	case ev, ok := <-e.events:
		if !ok {
			return Event{}, ErrClosed
		}
		return ev, nil
	case <-ctx.Done():
		return Event{}, ctx.Err()
	}
}

// ErrClosed is what NextEvent returns after the last event of an engine that has shut down.
var ErrClosed = errors.New("vmta: the engine has shut down and its events are all read")

// ShutdownContext is Shutdown with the grace the context leaves: until its deadline (5 s without
// one; none if it has already ended).
func (e *Engine) ShutdownContext(ctx context.Context) error {
	grace := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		grace = time.Until(d)
	}
	if ctx.Err() != nil || grace < 0 {
		grace = 0
	}
	return e.Shutdown(grace)
}

// Cancel cancels what is left of a message; it returns how many recipients were cancelled.
func (e *Engine) Cancel(id uint64) (int, error) {
	var n C.size_t
	if err := check(C.vmta_engine_cancel(e.h, C.uint64_t(id), &n), nil); err != nil {
		return 0, err
	}
	return int(n), nil
}

// Stats are the engine's counters (since start) and gauges (now), summed over shards.
type Stats struct {
	Shards, Submitted, Delivered, Deferred, Bounced, Expired, Cancelled                   uint64
	Queued, InFlight, ConnectionsOpen, ConnectionsOpened, ConnectionFailures, SpoolErrors uint64
	Suppressed                                                                            uint64 // recipients left out at submission
}

// Stats reads the counters.
func (e *Engine) Stats() (Stats, error) {
	var s C.vmta_stats
	if err := check(C.vmta_engine_stats(e.h, &s), nil); err != nil {
		return Stats{}, err
	}
	return Stats{
		uint64(s.shards), uint64(s.submitted), uint64(s.delivered), uint64(s.deferred), uint64(s.bounced),
		uint64(s.expired), uint64(s.cancelled), uint64(s.queued), uint64(s.in_flight),
		uint64(s.connections_open), uint64(s.connections_opened), uint64(s.connection_failures),
		uint64(s.spool_errors), uint64(s.suppressed),
	}, nil
}

// RecoveryReport is what opening the engine's spool found (recovery after a restart or a crash),
// summed over shards: all zero for a new spool.
type RecoveryReport struct {
	Segments, Messages, Recipients, Records         uint64
	CorruptRecords, CorruptBytes, TruncatedBytes    uint64
	OrphanRecords, RemovedSegments, DamagedSegments uint64
	Elapsed                                         time.Duration
}

// ReloadReport is what Reload did: what is in force now ("shaping", "bounce rules", "tenants") and
// what changed but needs a restart ("engine", "dns", "delivery", "retry", ...), left as it was.
type ReloadReport struct {
	Applied      []string
	NeedsRestart []string
}

var reloadApplied = []struct {
	bit  C.uint32_t
	name string
}{{C.VMTA_RELOAD_SHAPING, "shaping"}, {C.VMTA_RELOAD_BOUNCE_RULES, "bounce rules"}, {C.VMTA_RELOAD_TENANTS, "tenants"}}

var reloadRestart = []struct {
	bit  C.uint32_t
	name string
}{
	{C.VMTA_RESTART_ENGINE, "engine"}, {C.VMTA_RESTART_DNS, "dns"}, {C.VMTA_RESTART_DELIVERY, "delivery"},
	{C.VMTA_RESTART_RETRY, "retry"}, {C.VMTA_RESTART_SOURCES, "sources"}, {C.VMTA_RESTART_POOLS, "pools"},
	{C.VMTA_RESTART_ROUTING, "routing"}, {C.VMTA_RESTART_SMARTHOST, "smarthost"},
	{C.VMTA_RESTART_SUPPRESSION, "suppression"}, {C.VMTA_RESTART_VERP, "verp"},
	{C.VMTA_RESTART_TENANTS, "tenants on or off"},
}

// Reload applies a changed configuration to the running engine, all or nothing: shaping rules,
// bounce rules and tenants take effect for the next decision; what needs a restart is named in
// the report and left as it was. A configuration that does not check is an *Error matching
// ConfigInvalid (its Key names the field) and nothing changes. Safe from any goroutine.
func (e *Engine) Reload(o Options) (ReloadReport, error) {
	c, err := configure(&o)
	if err != nil {
		return ReloadReport{}, err
	}
	defer C.vmta_config_free(c)
	var r C.vmta_reload_report
	var cerr *C.vmta_error
	if err := check(C.vmta_engine_reload(e.h, c, &r, &cerr), cerr); err != nil {
		return ReloadReport{}, err
	}
	var out ReloadReport
	for _, a := range reloadApplied {
		if r.applied&a.bit != 0 {
			out.Applied = append(out.Applied, a.name)
		}
	}
	for _, a := range reloadRestart {
		if r.needs_restart&a.bit != 0 {
			out.NeedsRestart = append(out.NeedsRestart, a.name)
		}
	}
	return out, nil
}

// Recovery reads what opening the spool found.
func (e *Engine) Recovery() (RecoveryReport, error) {
	var r C.vmta_recovery_report
	if err := check(C.vmta_engine_recovery(e.h, &r), nil); err != nil {
		return RecoveryReport{}, err
	}
	return RecoveryReport{
		uint64(r.segments), uint64(r.messages), uint64(r.recipients), uint64(r.records),
		uint64(r.corrupt_records), uint64(r.corrupt_bytes), uint64(r.truncated_bytes),
		uint64(r.orphan_records), uint64(r.removed_segments), uint64(r.damaged_segments),
		time.Duration(r.elapsed_ms) * time.Millisecond,
	}, nil
}

// Prometheus is the metrics text in the Prometheus exposition format.
func (e *Engine) Prometheus() (string, error) {
	var b *C.vmta_buffer
	if err := check(C.vmta_engine_prometheus(e.h, &b), nil); err != nil {
		return "", err
	}
	defer C.vmta_buffer_free(b)
	return C.GoStringN((*C.char)(unsafe.Pointer(C.vmta_buffer_data(b))), C.int(C.vmta_buffer_len(b))), nil
}

// SetTenantLocked locks or unlocks a configured tenant.
func (e *Engine) SetTenantLocked(tenant string, locked bool) error {
	p, n := cbytes([]byte(tenant))
	return check(C.vmta_engine_set_tenant_locked(e.h, p, n, C.bool(locked)), nil)
}

// Suppression is a reason a recipient is not sent to.
type Suppression struct {
	Reason  string // userunknown, mailboxfull, feedback, suppressed, ...
	Source  string // bounce, complaint, manual
	Created time.Time
	Expires time.Time // zero: for good
}

// Suppressed says whether address is on the list of tenant ("": the default tenant) for stream
// ("": the every-stream entries only) now, and why.
func (e *Engine) Suppressed(tenant, address, stream string) (*Suppression, error) {
	tp, tn := cbytes([]byte(tenant))
	ap, an := cbytes([]byte(address))
	sp, sn := cbytes([]byte(stream))
	var hit C.bool
	var info C.vmta_suppression_info
	if err := check(C.vmta_engine_suppression_check(e.h, tp, tn, ap, an, sp, sn, &hit, &info), nil); err != nil {
		return nil, err
	}
	if !bool(hit) {
		return nil, nil
	}
	s := &Suppression{
		Reason:  gostr(info.reason),
		Source:  map[C.uint32_t]string{C.VMTA_SOURCE_BOUNCE: "bounce", C.VMTA_SOURCE_COMPLAINT: "complaint", C.VMTA_SOURCE_MANUAL: "manual"}[info.source],
		Created: time.Unix(int64(info.created), 0),
	}
	if info.expires != 0 {
		s.Expires = time.Unix(int64(info.expires), 0)
	}
	return s, nil
}

// Suppress puts address on the list of tenant by hand, for stream ("": every stream), with reason
// ("": suppressed), until expires (zero: for good).
func (e *Engine) Suppress(tenant, address, stream, reason string, expires time.Time) error {
	tp, tn := cbytes([]byte(tenant))
	ap, an := cbytes([]byte(address))
	sp, sn := cbytes([]byte(stream))
	rp, rn := cbytes([]byte(reason))
	var until C.uint64_t
	if !expires.IsZero() {
		until = C.uint64_t(expires.Unix())
	}
	return check(C.vmta_engine_suppression_add(e.h, tp, tn, ap, an, sp, sn, rp, rn, until), nil)
}

// Unsuppress removes a suppression; it says whether there was one.
func (e *Engine) Unsuppress(tenant, address, stream string) (bool, error) {
	tp, tn := cbytes([]byte(tenant))
	ap, an := cbytes([]byte(address))
	sp, sn := cbytes([]byte(stream))
	var removed C.bool
	err := check(C.vmta_engine_suppression_remove(e.h, tp, tn, ap, an, sp, sn, &removed), nil)
	return bool(removed), err
}

// ApplyReport applies an inbound DSN, ARF complaint or auto-reply that came back for tenant to the
// engine's suppression list (events follow: LateBounce, LateDeferral, Complaint). It returns the
// report's kind (dsn, arf, autoreply, not-a-bounce) and the message id it is about (0 when unknown).
// A report to a VERP address that does not verify is an error matching ForgedReport.
func (e *Engine) ApplyReport(tenant string, message []byte) (string, uint64, error) {
	tp, tn := cbytes([]byte(tenant))
	mp, mn := cbytes(message)
	var rep *C.vmta_report
	var cerr *C.vmta_error
	if err := check(C.vmta_engine_apply_report(e.h, tp, tn, mp, mn, &rep, &cerr), cerr); err != nil {
		return "", 0, err
	}
	defer C.vmta_report_free(rep)
	return C.GoString(C.vmta_report_kind(rep)), uint64(C.vmta_report_message_id(rep)), nil
}

// Shutdown stops intake, lets in-flight transactions finish within grace and stops the engine. The
// Events channel is closed once drained.
func (e *Engine) Shutdown(grace time.Duration) error {
	e.mu.Lock()
	e.shut = true
	e.mu.Unlock()
	return check(C.vmta_engine_shutdown(e.h, C.uint32_t(grace.Milliseconds())), nil)
}

// Close stops the engine at once (unless Shutdown was called), stops the event goroutine (events not
// read are dropped) and frees the engine. Calling it again does nothing.
func (e *Engine) Close() error {
	var err error
	e.close.Do(func() {
		e.mu.Lock()
		shut := e.shut
		e.shut = true
		e.mu.Unlock()
		if !shut {
			C.vmta_engine_shutdown(e.h, 0)
		}
		close(e.quit)
		C.vmta_engine_wakeup(e.h)
		<-e.pumped
		err = check(C.vmta_engine_free(e.h), nil)
	})
	return err
}

// Classification is what an SMTP reply means.
type Classification struct {
	Reason     string // userunknown, mailboxfull, ratelimited, ...
	Kind       string // hard, soft, block, transient, success
	Action     string // bounce, retry, none
	RetryAfter time.Duration
	Throttle   bool
}

// ClassifyReply classifies a reply line ("550 5.1.1 User unknown") with vmta's shipped rules.
func ClassifyReply(reply string) (Classification, error) {
	var c C.vmta_classification
	p, n := cbytes([]byte(reply))
	if err := check(C.vmta_classify_reply(p, n, &c), nil); err != nil {
		return Classification{}, err
	}
	action := map[C.uint32_t]string{C.VMTA_ACTION_BOUNCE: "bounce", C.VMTA_ACTION_RETRY: "retry", C.VMTA_ACTION_NONE: "none"}[c.action]
	return Classification{
		Reason:     gostr(c.reason),
		Kind:       gostr(c.kind),
		Action:     action,
		RetryAfter: time.Duration(c.retry_after_s) * time.Second,
		Throttle:   bool(c.throttle),
	}, nil
}
