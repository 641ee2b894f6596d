/*
 * misuse: what careless callers do to the vmta C API, each answered with an error code, never a
 * crash: NULL pointers, zero lengths, invalid UTF-8, oversized inputs, calls after shutdown and after
 * free, two threads polling events at once, handles freed twice or passed as the wrong type.
 *
 *   misuse SPOOL_DIR
 *
 * The engine relays to 127.0.70.254:9, where nothing listens, so nothing leaves the machine. Run it
 * under AddressSanitizer and valgrind: a crash, a leak or an invalid access fails the run. Exit status
 * 0 when every check holds.
 */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vmta.h>

static int failures = 0;
static int checks = 0;

#define CHECK_EQ(got, want)                                                                        \
  do {                                                                                             \
    long long g_ = (long long)(got), w_ = (long long)(want);                                       \
    checks++;                                                                                      \
    if (g_ != w_) {                                                                                \
      failures++;                                                                                  \
      fprintf(stderr, "misuse.c:%d: %s = %lld, want %s = %lld\n", __LINE__, #got, g_, #want, w_);  \
    }                                                                                              \
  } while (0)

#define CHECK(cond) CHECK_EQ(!!(cond), 1)

static vmta_str str(const char *s) {
  vmta_str v = {(const uint8_t *)s, strlen(s)};
  return v;
}

#define BYTES(s) (const uint8_t *)(s), strlen(s)

static const char *BODY = "From: a@ffi.test\r\nTo: b@ffi.test\r\nSubject: misuse\r\n\r\nhello\r\n";

struct poller {
  const vmta_engine *engine;
  int ok, concurrent, other;
};

static void *poll_loop(void *arg) {
  struct poller *p = arg;
  vmta_event events[4];
  for (int i = 0; i < 20000; i++) {
    size_t n = 0;
    vmta_result r = vmta_engine_poll_events(p->engine, events, 4, &n);
    if (r == VMTA_OK)
      p->ok++;
    else if (r == VMTA_CONCURRENT_POLL)
      p->concurrent++;
    else
      p->other++;
  }
  return NULL;
}

static void versions(void) {
  CHECK_EQ(vmta_version(), VMTA_VERSION_NUMBER);
  CHECK_EQ(VMTA_VERSION_NUMBER, VMTA_VERSION_MAJOR * 10000 + VMTA_VERSION_MINOR * 100 + VMTA_VERSION_PATCH);
  CHECK(strcmp(vmta_result_str(VMTA_OK), "ok") == 0);
  CHECK(strcmp(vmta_result_str(VMTA_BUSY), "busy: submission queue full") == 0);
  CHECK(strcmp(vmta_result_str(4000000000u), "unknown result code") == 0);
}

static void errors_and_buffers(void) {
  /* Freeing NULL is a no-op; reading through NULL gives defaults. */
  CHECK_EQ(vmta_error_free(NULL), VMTA_OK);
  CHECK_EQ(vmta_error_code(NULL), VMTA_NULL_PARAMETER);
  CHECK(strcmp(vmta_error_message(NULL), "") == 0);
  CHECK(strcmp(vmta_error_key(NULL), "") == 0);
  CHECK_EQ(vmta_buffer_free(NULL), VMTA_OK);
  CHECK(vmta_buffer_data(NULL) == NULL);
  CHECK_EQ(vmta_buffer_len(NULL), 0);
  /* A pointer that never came from vmta is refused, not dereferenced. */
  int not_a_handle = 42;
  CHECK_EQ(vmta_error_code((vmta_error *)&not_a_handle), VMTA_INVALID_HANDLE);
  CHECK_EQ(vmta_error_free((vmta_error *)&not_a_handle), VMTA_INVALID_HANDLE);
  CHECK_EQ(vmta_engine_free((vmta_engine *)&not_a_handle), VMTA_INVALID_HANDLE);
}

static void configurations(void) {
  vmta_config *c = NULL;
  vmta_error *err = NULL;
  CHECK_EQ(vmta_config_new(NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_config_from_toml(NULL, 10, &c, &err), VMTA_NULL_PARAMETER);
  CHECK(c == NULL && err == NULL);
  /* Zero length: the empty TOML document is a valid configuration of defaults. */
  CHECK_EQ(vmta_config_from_toml(NULL, 0, &c, NULL), VMTA_OK);
  CHECK_EQ(vmta_config_free(c), VMTA_OK);
  CHECK_EQ(vmta_config_free(c), VMTA_INVALID_HANDLE); /* double free detected */
  CHECK_EQ(vmta_config_set_shards(c, 2), VMTA_INVALID_HANDLE); /* use after free detected */
  c = NULL;

  const uint8_t bad_utf8[] = {'[', 0xff, ']'};
  CHECK_EQ(vmta_config_from_toml(bad_utf8, sizeof bad_utf8, &c, &err), VMTA_INVALID_UTF8);
  CHECK(c == NULL);
  CHECK_EQ(vmta_config_from_toml(BYTES("[engine]\nshards = \"many\"\n"), &c, &err), VMTA_CONFIG);
  CHECK(c == NULL && err != NULL);
  CHECK(strcmp(vmta_error_key(err), "engine.shards") == 0);
  CHECK_EQ(vmta_error_code(err), VMTA_CONFIG);
  CHECK_EQ(vmta_error_free(err), VMTA_OK);
  CHECK_EQ(vmta_error_free(err), VMTA_INVALID_HANDLE);
  err = NULL;
  CHECK_EQ(vmta_config_from_file(BYTES("/nonexistent/vmta.toml"), &c, &err), VMTA_CONFIG);
  CHECK(strstr(vmta_error_message(err), "/nonexistent/vmta.toml") != NULL);
  vmta_error_free(err);
  err = NULL;
  CHECK_EQ(vmta_config_from_file(NULL, 0, &c, NULL), VMTA_INVALID_ARGUMENT);

  size_t big = VMTA_MAX_CONFIG_SIZE + 1;
  uint8_t *huge = malloc(big);
  memset(huge, '#', big);
  CHECK_EQ(vmta_config_from_toml(huge, big, &c, NULL), VMTA_TOO_LARGE);
  free(huge);

  CHECK_EQ(vmta_config_new(&c), VMTA_OK);
  CHECK_EQ(vmta_config_set_spool_dir(c, NULL, 0), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_config_set_spool_dir(c, NULL, 3), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_config_set_spool_dir(c, bad_utf8, sizeof bad_utf8), VMTA_INVALID_UTF8);
  CHECK_EQ(vmta_config_set_durability(c, 99), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_config_set_tls(c, 99), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_config_set_port(c, 0), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_config_set_submission_queue(c, 0), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_config_set_helo_name(c, BYTES("two words")), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_config_add_nameserver(c, BYTES("nameserver.example")), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_config_set_smarthost(c, BYTES("no-port"), VMTA_TLS_DISABLED), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_config_set_retry(c, 10, 5, 100), VMTA_INVALID_ARGUMENT);
  /* A configuration handle is not an engine handle. */
  CHECK_EQ(vmta_engine_wakeup((const vmta_engine *)c), VMTA_INVALID_HANDLE);
  vmta_engine *e = NULL;
  CHECK_EQ(vmta_engine_new((const vmta_config *)&big, &e, NULL), VMTA_INVALID_HANDLE);
  CHECK_EQ(vmta_engine_new(NULL, &e, NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_new(c, NULL, NULL), VMTA_NULL_PARAMETER);
  CHECK(e == NULL);
  vmta_config_free(c);
}

static vmta_engine *start(const char *spool) {
  vmta_config *c = NULL;
  vmta_engine *e = NULL;
  vmta_error *err = NULL;
  CHECK_EQ(vmta_config_new(&c), VMTA_OK);
  CHECK_EQ(vmta_config_set_spool_dir(c, BYTES(spool)), VMTA_OK);
  CHECK_EQ(vmta_config_set_shards(c, 2), VMTA_OK);
  CHECK_EQ(vmta_config_set_pin_shards(c, false), VMTA_OK);
  CHECK_EQ(vmta_config_set_durability(c, VMTA_DURABILITY_NONE), VMTA_OK);
  CHECK_EQ(vmta_config_set_spool_segment_mb(c, 0), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_config_set_spool_segment_mb(c, 2), VMTA_OK);
  CHECK_EQ(vmta_config_set_smarthost(c, BYTES("127.0.70.254:9"), VMTA_TLS_DISABLED), VMTA_OK);
  vmta_result r = vmta_engine_new(c, &e, &err);
  CHECK_EQ(r, VMTA_OK);
  if (r != VMTA_OK) {
    fprintf(stderr, "engine: %s\n", vmta_error_message(err));
    vmta_error_free(err);
  }
  /* Reload: the same configuration changes nothing; a changed spool layout is named as needing a
     restart; broken rules are refused with their key; bad handles and NULLs are refused. */
  vmta_reload_report rep = {99, 99};
  CHECK_EQ(vmta_engine_reload(e, c, &rep, NULL), VMTA_OK);
  CHECK_EQ(rep.applied, 0);
  CHECK_EQ(rep.needs_restart, 0);
  CHECK_EQ(vmta_engine_reload(e, c, NULL, NULL), VMTA_OK);
  CHECK_EQ(vmta_engine_reload(NULL, c, &rep, NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_reload(e, NULL, &rep, NULL), VMTA_NULL_PARAMETER);
  int other = 7;
  CHECK_EQ(vmta_engine_reload((vmta_engine *)&other, c, &rep, NULL), VMTA_INVALID_HANDLE);
  CHECK_EQ(vmta_config_set_shards(c, 3), VMTA_OK);
  CHECK_EQ(vmta_engine_reload(e, c, &rep, NULL), VMTA_OK);
  CHECK_EQ(rep.needs_restart, VMTA_RESTART_ENGINE);
  CHECK_EQ(vmta_config_set_shaping_rules(c, BYTES("[defaults]\nmessage_rate = \"fast\"\n")), VMTA_OK);
  vmta_error *rerr = NULL;
  CHECK_EQ(vmta_engine_reload(e, c, &rep, &rerr), VMTA_CONFIG);
  CHECK(rerr != NULL && strcmp(vmta_error_key(rerr), "shaping.rules") == 0);
  vmta_error_free(rerr);
  vmta_config_free(c);
  return e;
}

static void submissions(vmta_engine *e) {
  vmta_str rcpt = str("b@ffi.test");
  vmta_message good = {str("a@ffi.test"), &rcpt, 1, str(""), NULL, 0, str(BODY), VMTA_PRIORITY_BULK};
  uint64_t id = 0;
  vmta_error *err = NULL;

  CHECK_EQ(vmta_engine_submit(NULL, &good, &id, NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_submit(e, NULL, &id, NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_submit(e, &good, NULL, NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_submit_nowait(NULL, &good, &id, NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_submit_nowait(e, NULL, &id, NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_submit_nowait(e, &good, NULL, NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_flush(NULL, 0), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_flush(e, 10000), VMTA_OK);

  vmta_message m = good;
  m.recipients = NULL;
  CHECK_EQ(vmta_engine_submit(e, &m, &id, NULL), VMTA_NULL_PARAMETER);
  m.recipients_len = 0; /* zero recipients: a refusal with a reason */
  CHECK_EQ(vmta_engine_submit(e, &m, &id, &err), VMTA_INVALID_MESSAGE);
  CHECK(err != NULL && strstr(vmta_error_message(err), "no recipients") != NULL);
  vmta_error_free(err);
  err = NULL;

  m = good;
  m.body.ptr = NULL;
  m.body.len = 0; /* zero-length message */
  CHECK_EQ(vmta_engine_submit(e, &m, &id, NULL), VMTA_INVALID_MESSAGE);
  m.body.len = 5;
  CHECK_EQ(vmta_engine_submit(e, &m, &id, NULL), VMTA_NULL_PARAMETER);
  m.body.ptr = (const uint8_t *)BODY;
  m.body.len = (size_t)VMTA_MAX_MESSAGE_SIZE + 1; /* refused by length, never read */
  CHECK_EQ(vmta_engine_submit(e, &m, &id, NULL), VMTA_TOO_LARGE);
  m.body.len = SIZE_MAX;
  CHECK_EQ(vmta_engine_submit(e, &m, &id, NULL), VMTA_TOO_LARGE);

  m = good;
  const uint8_t bad_utf8[] = {'x', 0xc3, 0x28, '@', 'f', '.', 't'};
  vmta_str bad = {bad_utf8, sizeof bad_utf8};
  m.recipients = &bad;
  CHECK_EQ(vmta_engine_submit(e, &m, &id, NULL), VMTA_INVALID_UTF8);
  m = good;
  m.sender = bad;
  CHECK_EQ(vmta_engine_submit(e, &m, &id, NULL), VMTA_INVALID_UTF8);
  m = good;
  m.tenant = bad;
  CHECK_EQ(vmta_engine_submit(e, &m, &id, NULL), VMTA_INVALID_UTF8);

  m = good;
  m.recipients_len = (size_t)VMTA_MAX_RECIPIENTS + 1;
  CHECK_EQ(vmta_engine_submit(e, &m, &id, NULL), VMTA_TOO_LARGE);
  char *long_addr = malloc(VMTA_MAX_FIELD_SIZE + 2);
  memset(long_addr, 'x', VMTA_MAX_FIELD_SIZE + 1);
  long_addr[VMTA_MAX_FIELD_SIZE + 1] = 0;
  m = good;
  m.sender = str(long_addr);
  CHECK_EQ(vmta_engine_submit(e, &m, &id, NULL), VMTA_TOO_LARGE);
  free(long_addr);

  vmta_tag tags[VMTA_MAX_TAGS + 1];
  for (int i = 0; i <= VMTA_MAX_TAGS; i++) {
    tags[i].key = str("k");
    tags[i].value = str("v");
  }
  m = good;
  m.tags = tags;
  m.tags_len = VMTA_MAX_TAGS + 1;
  CHECK_EQ(vmta_engine_submit(e, &m, &id, NULL), VMTA_TOO_LARGE);
  m.tags = NULL;
  CHECK_EQ(vmta_engine_submit(e, &m, &id, NULL), VMTA_NULL_PARAMETER);
  m.tags = tags;
  m.tags_len = 1;
  tags[0].key = str("");
  CHECK_EQ(vmta_engine_submit(e, &m, &id, NULL), VMTA_INVALID_ARGUMENT);

  m = good;
  m.priority = 7;
  CHECK_EQ(vmta_engine_submit(e, &m, &id, NULL), VMTA_INVALID_ARGUMENT);
  vmta_str nobody = str("nobody");
  m = good;
  m.recipients = &nobody;
  CHECK_EQ(vmta_engine_submit(e, &m, &id, &err), VMTA_INVALID_MESSAGE);
  CHECK(strstr(vmta_error_message(err), "nobody") != NULL);
  vmta_error_free(err);
  err = NULL;
  CHECK_EQ(id, 0); /* no refusal wrote an id */

  /* Tenants are not configured: locking one is refused. */
  CHECK_EQ(vmta_engine_set_tenant_locked(e, BYTES("acme"), true), VMTA_UNKNOWN_TENANT);
  CHECK_EQ(vmta_engine_set_tenant_locked(e, NULL, 4, true), VMTA_NULL_PARAMETER);

  /* A good submission goes through; its message can be cancelled. */
  CHECK_EQ(vmta_engine_submit(e, &good, &id, NULL), VMTA_OK);
  CHECK(id != 0);
  size_t cancelled = 99;
  CHECK_EQ(vmta_engine_cancel(e, id, &cancelled), VMTA_OK);
  CHECK(cancelled <= 1);
  CHECK_EQ(vmta_engine_cancel(e, 12345, NULL), VMTA_OK);
}

static void events_and_stats(vmta_engine *e) {
  size_t n = 0;
  vmta_event ev[2];
  CHECK_EQ(vmta_engine_poll_events(e, NULL, 0, &n), VMTA_OK);
  CHECK_EQ(n, 0);
  CHECK_EQ(vmta_engine_poll_events(e, NULL, 2, &n), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_poll_events(e, ev, 2, NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_poll_events(NULL, ev, 2, &n), VMTA_NULL_PARAMETER);
  CHECK(vmta_engine_event_fd(e) >= 0);
  CHECK_EQ(vmta_engine_event_fd(NULL), -1);
  CHECK_EQ(vmta_engine_wait(NULL, 0), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_wakeup(NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_stats(e, NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_prometheus(e, NULL), VMTA_NULL_PARAMETER);
  vmta_stats s;
  CHECK_EQ(vmta_engine_stats(e, &s), VMTA_OK);
  CHECK_EQ(s.shards, 2);
  vmta_recovery_report rr;
  CHECK_EQ(vmta_engine_recovery(e, NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_recovery(NULL, &rr), VMTA_NULL_PARAMETER);
  int stranger = 42;
  CHECK_EQ(vmta_engine_recovery((vmta_engine *)&stranger, &rr), VMTA_INVALID_HANDLE);
  CHECK_EQ(vmta_engine_recovery(e, &rr), VMTA_OK);
  CHECK_EQ(rr.corrupt_records, 0);
  vmta_buffer *text = NULL;
  CHECK_EQ(vmta_engine_prometheus(e, &text), VMTA_OK);
  CHECK(strstr((const char *)vmta_buffer_data(text), "# TYPE vmta_submitted_total counter") != NULL);
  CHECK_EQ(strlen((const char *)vmta_buffer_data(text)), vmta_buffer_len(text));
  CHECK_EQ(vmta_buffer_free(text), VMTA_OK);
  CHECK_EQ(vmta_buffer_free(text), VMTA_INVALID_HANDLE);
  CHECK(vmta_buffer_data(text) == NULL);

  /* Two threads polling: one gets the events, the other VMTA_CONCURRENT_POLL; nothing else. */
  struct poller a = {e, 0, 0, 0}, b = {e, 0, 0, 0};
  pthread_t ta, tb;
  pthread_create(&ta, NULL, poll_loop, &a);
  pthread_create(&tb, NULL, poll_loop, &b);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  CHECK_EQ(a.other + b.other, 0);
  CHECK_EQ(a.ok + a.concurrent + b.ok + b.concurrent, 40000);
  printf("two pollers: %d ok, %d concurrent-poll refusals\n", a.ok + b.ok, a.concurrent + b.concurrent);
}

static void after_shutdown(vmta_engine *e) {
  CHECK_EQ(vmta_engine_shutdown(e, 100), VMTA_OK);
  CHECK_EQ(vmta_engine_shutdown(e, 100), VMTA_OK);
  vmta_str rcpt = str("b@ffi.test");
  vmta_message m = {str("a@ffi.test"), &rcpt, 1, str(""), NULL, 0, str(BODY), 0};
  uint64_t id = 0;
  vmta_error *err = NULL;
  CHECK_EQ(vmta_engine_submit(e, &m, &id, &err), VMTA_SHUTTING_DOWN);
  CHECK_EQ(vmta_error_code(err), VMTA_SHUTTING_DOWN);
  vmta_error_free(err);
  CHECK_EQ(vmta_engine_cancel(e, 1, NULL), VMTA_SHUTTING_DOWN);
  /* Draining the last events still works; then wait says the engine is gone, without blocking. */
  vmta_event ev[8];
  size_t n = 0;
  do {
    CHECK_EQ(vmta_engine_poll_events(e, ev, 8, &n), VMTA_OK);
  } while (n > 0);
  CHECK_EQ(vmta_engine_wait(e, 60000), VMTA_SHUTTING_DOWN);
  vmta_stats s;
  CHECK_EQ(vmta_engine_stats(e, &s), VMTA_OK);

  CHECK_EQ(vmta_engine_free(e), VMTA_OK);
  CHECK_EQ(vmta_engine_free(e), VMTA_INVALID_HANDLE);
  CHECK_EQ(vmta_engine_submit(e, &m, &id, NULL), VMTA_INVALID_HANDLE);
  CHECK_EQ(vmta_engine_poll_events(e, ev, 8, &n), VMTA_INVALID_HANDLE);
  CHECK_EQ(vmta_engine_wait(e, 10), VMTA_INVALID_HANDLE);
  CHECK_EQ(vmta_engine_event_fd(e), -1);
  CHECK_EQ(vmta_engine_free(NULL), VMTA_OK);
}

static void bounces(const char *spool) {
  vmta_classification c;
  CHECK_EQ(vmta_classify_reply(NULL, 0, &c), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_classify_reply(NULL, 3, &c), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_classify_reply(BYTES("550 5.1.1 unknown"), NULL), VMTA_NULL_PARAMETER);
  const uint8_t junk[] = {0x35, 0x35, 0x30, 0x20, 0xff, 0xfe};
  CHECK_EQ(vmta_classify_reply(junk, sizeof junk, &c), VMTA_INVALID_UTF8);
  CHECK_EQ(vmta_classify_reply(BYTES("552 5.2.2 Mailbox full"), &c), VMTA_OK);
  CHECK(c.reason.len == 11 && memcmp(c.reason.ptr, "mailboxfull", 11) == 0);

  char path[4096];
  snprintf(path, sizeof path, "%s/suppressions.log", spool);
  vmta_suppression *s = NULL;
  vmta_error *err = NULL;
  CHECK_EQ(vmta_suppression_open(BYTES("/nonexistent/dir/x.log"), &s, &err), VMTA_IO);
  CHECK(err != NULL);
  vmta_error_free(err);
  CHECK_EQ(vmta_suppression_open(BYTES(path), &s, NULL), VMTA_OK);
  bool hit = true;
  CHECK_EQ(vmta_suppression_check(s, BYTES("t"), BYTES("a@b.c"), NULL, 0, NULL, NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_suppression_check(s, BYTES("t"), BYTES("a@b.c"), NULL, 0, &hit, NULL), VMTA_OK);
  CHECK(!hit);
  CHECK_EQ(vmta_suppression_add(s, NULL, 0, BYTES("a@b.c"), NULL, 0, NULL, 0, 0), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_suppression_add(s, BYTES("t\tx"), BYTES("a@b.c"), NULL, 0, NULL, 0, 0), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_suppression_add(s, BYTES("t"), BYTES("a@b.c"), NULL, 0, BYTES("nonsense"), 0), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_suppression_add(s, BYTES("t"), BYTES("a@b.c"), NULL, 0, NULL, 0, 0), VMTA_OK);
  vmta_suppression_list *l = NULL;
  CHECK_EQ(vmta_suppression_list_new(s, NULL, 0, &l), VMTA_OK);
  CHECK_EQ(vmta_suppression_list_len(l), 1);
  vmta_suppression_entry entry;
  CHECK_EQ(vmta_suppression_list_get(l, 1, &entry), VMTA_NOT_FOUND);
  CHECK_EQ(vmta_suppression_list_get(l, SIZE_MAX, &entry), VMTA_NOT_FOUND);
  CHECK_EQ(vmta_suppression_list_free(l), VMTA_OK);
  CHECK_EQ(vmta_suppression_list_free(l), VMTA_INVALID_HANDLE);
  CHECK_EQ(vmta_suppression_list_len(l), 0);

  vmta_report *rep = NULL;
  CHECK_EQ(vmta_suppression_feed_report(s, NULL, BYTES("t"), NULL, 0, 0, &rep, NULL), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_suppression_feed_report(s, NULL, BYTES("t"), BYTES("x"), 99, &rep, NULL), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_suppression_feed_report(s, (vmta_verp *)s, BYTES("t"), BYTES("x"), 0, &rep, NULL), VMTA_INVALID_HANDLE);
  CHECK_EQ(vmta_suppression_feed_report(s, NULL, BYTES("t"), BYTES("not a report at all"), 0, &rep, NULL), VMTA_OK);
  CHECK(strcmp(vmta_report_kind(rep), "not-a-bounce") == 0);
  CHECK_EQ(vmta_report_len(rep), 0);
  CHECK_EQ(vmta_report_free(rep), VMTA_OK);
  CHECK_EQ(vmta_report_free(rep), VMTA_INVALID_HANDLE);

  vmta_verp *v = NULL;
  CHECK_EQ(vmta_verp_new(BYTES("bounces"), BYTES("b.example"), NULL, 0, &v), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_verp_new(BYTES("bad prefix"), BYTES("b.example"), BYTES("k"), &v), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_verp_new(BYTES("bounces"), BYTES("b.example"), BYTES("k"), &v), VMTA_OK);
  vmta_buffer *addr = NULL;
  CHECK_EQ(vmta_verp_encode(v, BYTES("id with spaces"), BYTES("a@b.c"), &addr), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_verp_encode(v, BYTES("m1"), BYTES("a@b.c"), &addr), VMTA_OK);
  CHECK(strncmp((const char *)vmta_buffer_data(addr), "bounces+m1.", 11) == 0);
  vmta_buffer_free(addr);
  CHECK_EQ(vmta_verp_free(v), VMTA_OK);
  CHECK_EQ(vmta_verp_free(v), VMTA_INVALID_HANDLE);
  CHECK_EQ(vmta_suppression_free(s), VMTA_OK);
  CHECK_EQ(vmta_suppression_free(s), VMTA_INVALID_HANDLE);
  CHECK_EQ(vmta_suppression_check(s, BYTES("t"), BYTES("a@b.c"), NULL, 0, &hit, NULL), VMTA_INVALID_HANDLE);
}

/* The engine's suppression list and inbound reports: NULL checks, refusals, a forged report. */
static void engine_suppression(const char *spool) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/verp", spool);
  vmta_config *c = NULL;
  CHECK_EQ(vmta_config_new(&c), VMTA_OK);
  CHECK_EQ(vmta_config_set_spool_dir(c, BYTES(dir)), VMTA_OK);
  CHECK_EQ(vmta_config_set_shards(c, 1), VMTA_OK);
  CHECK_EQ(vmta_config_set_pin_shards(c, false), VMTA_OK);
  CHECK_EQ(vmta_config_set_durability(c, VMTA_DURABILITY_NONE), VMTA_OK);
  CHECK_EQ(vmta_config_set_spool_segment_mb(c, 2), VMTA_OK);
  CHECK_EQ(vmta_config_set_smarthost(c, BYTES("127.0.70.254:9"), VMTA_TLS_DISABLED), VMTA_OK);
  CHECK_EQ(vmta_config_set_verp(c, BYTES("bounces"), BYTES("bounce.ffi.test"), BYTES("short")),
           VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_config_set_verp(c, BYTES("bounces"), BYTES("bounce.ffi.test"), BYTES("sixteen bytes or more")),
           VMTA_OK);
  CHECK_EQ(vmta_config_set_suppression(NULL, true), VMTA_NULL_PARAMETER);
  vmta_engine *e = NULL;
  CHECK_EQ(vmta_engine_new(c, &e, NULL), VMTA_OK);
  vmta_config_free(c);
  if (e == NULL)
    return;

  bool hit = true;
  CHECK_EQ(vmta_engine_suppression_check(e, NULL, 0, BYTES("a@b.c"), NULL, 0, NULL, NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_suppression_check(e, NULL, 0, NULL, 5, NULL, 0, &hit, NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_suppression_check(NULL, NULL, 0, BYTES("a@b.c"), NULL, 0, &hit, NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_suppression_check(e, NULL, 0, BYTES("a@b.c"), NULL, 0, &hit, NULL), VMTA_OK);
  CHECK(!hit);
  CHECK_EQ(vmta_engine_suppression_add(e, NULL, 0, BYTES("no address"), NULL, 0, NULL, 0, 0), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_engine_suppression_add(e, NULL, 0, BYTES("a@b.c"), NULL, 0, BYTES("nonsense"), 0),
           VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_engine_suppression_add(e, BYTES("t\tx"), BYTES("a@b.c"), NULL, 0, NULL, 0, 0), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_engine_suppression_add(e, NULL, 0, BYTES("b@ffi.test"), NULL, 0, NULL, 0, 0), VMTA_OK);
  vmta_suppression_info info;
  CHECK_EQ(vmta_engine_suppression_check(e, NULL, 0, BYTES("B@FFI.TEST"), NULL, 0, &hit, &info), VMTA_OK);
  CHECK(hit && info.source == VMTA_SOURCE_MANUAL && info.expires == 0);
  CHECK(info.reason.len == 10 && memcmp(info.reason.ptr, "suppressed", 10) == 0);

  vmta_str rcpt = str("b@ffi.test");
  vmta_message m = {str("a@ffi.test"), &rcpt, 1, str(""), NULL, 0, str(BODY), VMTA_PRIORITY_BULK};
  uint64_t id = 0;
  vmta_error *err = NULL;
  CHECK_EQ(vmta_engine_submit(e, &m, &id, &err), VMTA_SUPPRESSED);
  CHECK_EQ(vmta_error_code(err), VMTA_SUPPRESSED);
  CHECK(strstr(vmta_error_message(err), "b@ffi.test") != NULL);
  vmta_error_free(err);
  CHECK_EQ(id, 0);

  vmta_report *rep = NULL;
  const char *forged = "From: MAILER-DAEMON@x.test\r\nTo: bounces+0000000000000001.aaaaaaaaaaaaa.ceo=ffi.test"
                       "@bounce.ffi.test\r\nSubject: failure\r\n\r\nceo@ffi.test: 550 5.1.1 user unknown\r\n";
  CHECK_EQ(vmta_engine_apply_report(e, NULL, 0, NULL, 0, &rep, NULL), VMTA_INVALID_ARGUMENT);
  CHECK_EQ(vmta_engine_apply_report(e, NULL, 0, BYTES(forged), NULL, NULL), VMTA_NULL_PARAMETER);
  err = NULL;
  CHECK_EQ(vmta_engine_apply_report(e, NULL, 0, BYTES(forged), &rep, &err), VMTA_FORGED_REPORT);
  CHECK(rep == NULL);
  CHECK_EQ(vmta_error_code(err), VMTA_FORGED_REPORT);
  vmta_error_free(err);
  CHECK(strcmp(vmta_result_str(VMTA_FORGED_REPORT), "forged report: VERP signature does not verify") == 0);
  CHECK_EQ(vmta_engine_apply_report(e, NULL, 0, BYTES("not a report"), &rep, NULL), VMTA_OK);
  CHECK(strcmp(vmta_report_kind(rep), "not-a-bounce") == 0);
  CHECK_EQ(vmta_report_message_id(rep), 0);
  CHECK_EQ(vmta_report_free(rep), VMTA_OK);
  CHECK_EQ(vmta_report_message_id(rep), 0);

  vmta_suppression_list *l = NULL;
  CHECK_EQ(vmta_engine_suppression_list_new(e, NULL, 0, NULL), VMTA_NULL_PARAMETER);
  CHECK_EQ(vmta_engine_suppression_list_new(e, NULL, 0, &l), VMTA_OK);
  CHECK_EQ(vmta_suppression_list_len(l), 1);
  CHECK_EQ(vmta_suppression_list_free(l), VMTA_OK);
  bool removed = false;
  CHECK_EQ(vmta_engine_suppression_remove(e, NULL, 0, BYTES("b@ffi.test"), NULL, 0, &removed), VMTA_OK);
  CHECK(removed);
  CHECK_EQ(vmta_engine_suppression_remove(e, NULL, 0, BYTES("b@ffi.test"), NULL, 0, NULL), VMTA_OK);
  CHECK_EQ(vmta_engine_free(e), VMTA_OK);
  CHECK_EQ(vmta_engine_suppression_add(e, NULL, 0, BYTES("b@ffi.test"), NULL, 0, NULL, 0, 0), VMTA_INVALID_HANDLE);
  CHECK_EQ(vmta_engine_apply_report(e, NULL, 0, BYTES(forged), &rep, NULL), VMTA_INVALID_HANDLE);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s SPOOL_DIR\n", argv[0]);
    return 2;
  }
  versions();
  errors_and_buffers();
  configurations();
  vmta_engine *e = start(argv[1]);
  if (e == NULL)
    return 1;
  submissions(e);
  events_and_stats(e);
  after_shutdown(e);
  bounces(argv[1]);
  engine_suppression(argv[1]);
  printf("misuse: %d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
