/*
 * send: start a vmta engine, submit one message per recipient, wait on the engine's event fd with
 * poll(2) and print each outcome, then shut down.
 *
 *   send CONFIG.toml SENDER RECIPIENT...
 *
 * It waits (at most 60 s) until every recipient has a final outcome (delivered, bounced, expired
 * or cancelled); deferrals are printed as they come. Output, one line per event:
 *
 *   EVENT MESSAGE_ID RECIPIENT CODE ENHANCED REASON TEXT
 *
 * Then the suppression list: each delivered recipient gets a DSN reporting a failure after the 250
 * (user unknown), applied with vmta_engine_apply_report; a late-bounce event follows, matched to
 * the message by the Message-ID the engine added, and the recipient is suppressed: submitting to
 * it again is refused with VMTA_SUPPRESSED. Extra lines:
 *
 *   report KIND outcomes=N message=MESSAGE_ID suppressed=0|1
 *   refused RECIPIENT suppressed          (or: accepted RECIPIENT RESULT)
 *
 * Exit status: 0 when every recipient reached a final outcome and every late bounce came, 1
 * otherwise.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <vmta.h>

static const char *kind_name(uint32_t kind) {
  switch (kind) {
  case VMTA_EVENT_DELIVERED: return "delivered";
  case VMTA_EVENT_DEFERRED: return "deferred";
  case VMTA_EVENT_BOUNCED: return "bounced";
  case VMTA_EVENT_EXPIRED: return "expired";
  case VMTA_EVENT_CANCELLED: return "cancelled";
  case VMTA_EVENT_REFUSED: return "refused";
  case VMTA_EVENT_SUPPRESSED: return "suppressed";
  case VMTA_EVENT_LATE_BOUNCE: return "late-bounce";
  case VMTA_EVENT_LATE_DEFERRAL: return "late-deferral";
  case VMTA_EVENT_COMPLAINT: return "complaint";
  default: return "unknown";
  }
}

static vmta_str str(const char *s) {
  vmta_str v = {(const uint8_t *)s, strlen(s)};
  return v;
}

static void fail(const char *what, vmta_result r, vmta_error *err) {
  fprintf(stderr, "send: %s: %s", what, vmta_result_str(r));
  if (err != NULL) {
    fprintf(stderr, ": %s", vmta_error_message(err));
    vmta_error_free(err);
  }
  fputc('\n', stderr);
}

struct pending {
  uint64_t id;
  const char *recipient;
  int final;
  uint32_t kind; /* the final event's kind */
};

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Submits one message to one recipient: waiting until it is durable (vmta_engine_submit), or with
 * VMTA_SEND_NOWAIT=1 in the environment, handing it over at once (vmta_engine_submit_nowait; the
 * first round is then followed by vmta_engine_flush). */
static vmta_result submit(vmta_engine *engine, const char *sender, const char *recipient,
                          uint64_t *id, vmta_error **err) {
  char body[1024];
  snprintf(body, sizeof body, "From: <%s>\r\nTo: <%s>\r\nSubject: vmta C example\r\n\r\nHello from C.\r\n",
           sender, recipient);
  vmta_str rcpt = str(recipient);
  vmta_tag tag = {str("example"), str("c")};
  vmta_message m = {
      .sender = str(sender),
      .recipients = &rcpt,
      .recipients_len = 1,
      .tenant = str(""),
      .tags = &tag,
      .tags_len = 1,
      .body = str(body),
      .priority = VMTA_PRIORITY_TRANSACTIONAL,
  };
  const char *nowait = getenv("VMTA_SEND_NOWAIT");
  if (nowait != NULL && strcmp(nowait, "1") == 0)
    return vmta_engine_submit_nowait(engine, &m, id, err);
  return vmta_engine_submit(engine, &m, id, err);
}

/* Prints events as they come (waiting on the event fd with poll(2), at most 60 s) until *remaining
 * reaches 0: with `late` NULL, each recipient's final outcome counts; otherwise a late bounce of
 * `late` does. */
static void drain(vmta_engine *engine, int fd, struct pending *p, int n, int *remaining,
                  const char *late) {
  vmta_event events[16];
  double deadline = now_s() + 60.0;
  while (*remaining > 0 && now_s() < deadline) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int ready = poll(&pfd, 1, 1000);
    if (ready < 0 && errno != EINTR) {
      perror("poll");
      break;
    }
    if (ready <= 0)
      continue;
    size_t got = 0;
    vmta_result r = vmta_engine_poll_events(engine, events, sizeof events / sizeof events[0], &got);
    if (r != VMTA_OK) {
      fail("poll events", r, NULL);
      break;
    }
    for (size_t i = 0; i < got; i++) {
      const vmta_event *e = &events[i];
      char enhanced[24] = "-";
      if (e->enhanced_class != 0)
        snprintf(enhanced, sizeof enhanced, "%u.%u.%u", e->enhanced_class, e->enhanced_subject,
                 e->enhanced_detail);
      /* The views are valid until the next vmta_engine_poll_events: print them now. */
      printf("%s %016" PRIx64 " %.*s %u %s %.*s %.*s\n", kind_name(e->kind), e->message_id,
             (int)e->recipient.len, (const char *)e->recipient.ptr, e->code, enhanced,
             e->reason.len ? (int)e->reason.len : 1, e->reason.len ? (const char *)e->reason.ptr : "-",
             (int)e->text.len, (const char *)e->text.ptr);
      if (late != NULL) {
        if (e->kind == VMTA_EVENT_LATE_BOUNCE && e->recipient.len == strlen(late) &&
            memcmp(e->recipient.ptr, late, e->recipient.len) == 0)
          (*remaining)--;
        continue;
      }
      for (int j = 0; j < n; j++) {
        if (p[j].final || p[j].id != e->message_id || e->kind == VMTA_EVENT_DEFERRED)
          continue;
        p[j].final = 1;
        p[j].kind = e->kind;
        (*remaining)--;
      }
    }
    fflush(stdout);
  }
}

int main(int argc, char **argv) {
  int a = 1;
  if (argc - a < 3) {
    fprintf(stderr, "usage: %s CONFIG.toml SENDER RECIPIENT...\n", argv[0]);
    return 2;
  }
  const char *config_path = argv[a];
  const char *sender = argv[a + 1];
  int n = argc - a - 2;
  char **recipients = argv + a + 2;

  if (vmta_version() != VMTA_VERSION_NUMBER) {
    fprintf(stderr, "send: header %d does not match library %" PRIu32 "\n", VMTA_VERSION_NUMBER,
            vmta_version());
    return 1;
  }

  vmta_config *config = NULL;
  vmta_error *err = NULL;
  vmta_result r = vmta_config_from_file((const uint8_t *)config_path, strlen(config_path), &config, &err);
  if (r != VMTA_OK) {
    fail("configuration", r, err);
    return 1;
  }
  vmta_engine *engine = NULL;
  r = vmta_engine_new(config, &engine, &err);
  vmta_config_free(config); /* the engine keeps its own copy */
  if (r != VMTA_OK) {
    fail("engine", r, err);
    return 1;
  }

  struct pending *p = calloc((size_t)n, sizeof *p);
  if (p == NULL) {
    vmta_engine_free(engine);
    return 1;
  }
  int remaining = 0;
  for (int i = 0; i < n; i++) {
    p[i].recipient = recipients[i];
    r = submit(engine, sender, recipients[i], &p[i].id, &err);
    if (r != VMTA_OK) {
      fail(recipients[i], r, err);
      err = NULL;
      p[i].final = 1;
      continue;
    }
    remaining++;
  }
  const char *nowait = getenv("VMTA_SEND_NOWAIT");
  if (nowait != NULL && strcmp(nowait, "1") == 0) {
    r = vmta_engine_flush(engine, 30000);
    printf("flushed %s\n", vmta_result_str(r));
  }

  int fd = vmta_engine_event_fd(engine);
  drain(engine, fd, p, n, &remaining, NULL);

  /* Suppression: a DSN after a 250 puts a delivered recipient on the list; it is refused when
   * submitted again. */
  int late_missing = 0;
  for (int j = 0; j < n; j++) {
    if (p[j].kind == VMTA_EVENT_DELIVERED) {
      char dsn[2048];
      snprintf(dsn, sizeof dsn,
               "From: MAILER-DAEMON@mx.example\r\nTo: <%s>\r\nSubject: Undelivered Mail Returned to "
               "Sender\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; "
               "report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: "
               "message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n"
               "Final-Recipient: rfc822; %s\r\nAction: failed\r\nStatus: 5.1.1\r\n"
               "Diagnostic-Code: smtp; 550 5.1.1 <%s>: user unknown\r\n\r\n--b\r\nContent-Type: "
               "text/rfc822-headers\r\n\r\nFrom: <%s>\r\nMessage-ID: <%016" PRIx64
               "@localhost>\r\n\r\n--b--\r\n",
               sender, p[j].recipient, p[j].recipient, sender, p[j].id);
      vmta_report *report = NULL;
      r = vmta_engine_apply_report(engine, NULL, 0, (const uint8_t *)dsn, strlen(dsn), &report, &err);
      if (r != VMTA_OK) {
        fail("apply report", r, err);
        err = NULL;
        late_missing++;
        continue;
      }
      vmta_report_outcome o;
      int suppressed = vmta_report_get(report, 0, &o) == VMTA_OK && o.suppressed;
      printf("report %s outcomes=%zu message=%016" PRIx64 " suppressed=%d\n", vmta_report_kind(report),
             vmta_report_len(report), vmta_report_message_id(report), suppressed);
      vmta_report_free(report);
      int want = 1;
      drain(engine, fd, p, n, &want, p[j].recipient);
      late_missing += want;
    }
  }
  for (int j = 0; j < n; j++) {
    if (p[j].kind != VMTA_EVENT_DELIVERED)
      continue;
    uint64_t id = 0;
    r = submit(engine, sender, p[j].recipient, &id, &err);
    if (r == VMTA_SUPPRESSED)
      printf("refused %s suppressed\n", p[j].recipient);
    else
      printf("accepted %s %s\n", p[j].recipient, vmta_result_str(r));
    vmta_error_free(err);
    err = NULL;
  }
  fflush(stdout);

  vmta_stats stats;
  if (vmta_engine_stats(engine, &stats) == VMTA_OK)
    printf("stats submitted=%" PRIu64 " delivered=%" PRIu64 " bounced=%" PRIu64
           " deferred=%" PRIu64 " cancelled=%" PRIu64 "\n",
           stats.submitted, stats.delivered, stats.bounced, stats.deferred, stats.cancelled);
  vmta_engine_shutdown(engine, 2000);
  vmta_engine_free(engine);
  free(p);
  if (remaining > 0) {
    fprintf(stderr, "send: %d recipient(s) without a final outcome\n", remaining);
    return 1;
  }
  if (late_missing > 0) {
    fprintf(stderr, "send: %d late bounce(s) missing\n", late_missing);
    return 1;
  }
  return 0;
}
