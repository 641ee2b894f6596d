/*
 * bench: submission cost through the C ABI. THREADS threads call vmta_engine_submit COUNT times in
 * all (one message, one recipient each) while one more thread drains events (vmta_engine_wait +
 * vmta_engine_poll_events), then prints calls per second for the submissions alone.
 *
 *   bench CONFIG.toml RECIPIENT COUNT THREADS
 *
 * Use an engine with durability "none" and a recipient whose domain goes to an accepting sink.
 */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <vmta.h>

static vmta_engine *engine;
static vmta_message message;
static atomic_long next_call;
static atomic_long refused;
static atomic_int stop_draining;
static long count;

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void *submitter(void *arg) {
  (void)arg;
  uint64_t id;
  while (atomic_fetch_add(&next_call, 1) < count) {
    vmta_result r = vmta_engine_submit(engine, &message, &id, NULL);
    if (r != VMTA_OK)
      atomic_fetch_add(&refused, 1);
  }
  return NULL;
}

static void *drainer(void *arg) {
  (void)arg;
  static vmta_event events[256];
  while (!atomic_load(&stop_draining)) {
    if (vmta_engine_wait(engine, 100) != VMTA_OK)
      continue;
    size_t n;
    while (vmta_engine_poll_events(engine, events, 256, &n) == VMTA_OK && n > 0) {
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s CONFIG.toml RECIPIENT COUNT THREADS\n", argv[0]);
    return 2;
  }
  count = atol(argv[3]);
  int threads = atoi(argv[4]);
  if (count <= 0 || threads <= 0 || threads > 64)
    return 2;
  vmta_config *config = NULL;
  vmta_error *err = NULL;
  if (vmta_config_from_file((const uint8_t *)argv[1], strlen(argv[1]), &config, &err) != VMTA_OK ||
      vmta_engine_new(config, &engine, &err) != VMTA_OK) {
    fprintf(stderr, "bench: %s\n", vmta_error_message(err));
    return 1;
  }
  vmta_config_free(config);
  static char body[512];
  snprintf(body, sizeof body, "From: <bench@vmta.test>\r\nTo: <%s>\r\nSubject: bench\r\n\r\nbench\r\n", argv[2]);
  static vmta_str rcpt;
  rcpt.ptr = (const uint8_t *)argv[2];
  rcpt.len = strlen(argv[2]);
  message.sender.ptr = (const uint8_t *)"bench@vmta.test";
  message.sender.len = strlen("bench@vmta.test");
  message.recipients = &rcpt;
  message.recipients_len = 1;
  message.body.ptr = (const uint8_t *)body;
  message.body.len = strlen(body);
  message.priority = VMTA_PRIORITY_BULK;

  pthread_t drain, t[64];
  pthread_create(&drain, NULL, drainer, NULL);
  double start = now_s();
  for (int i = 0; i < threads; i++)
    pthread_create(&t[i], NULL, submitter, NULL);
  for (int i = 0; i < threads; i++)
    pthread_join(t[i], NULL);
  double elapsed = now_s() - start;
  atomic_store(&stop_draining, 1);
  vmta_engine_wakeup(engine);
  pthread_join(drain, NULL);
  printf("c submit threads=%d calls=%ld refused=%ld seconds=%.3f calls/s=%.0f\n", threads, count,
         (long)atomic_load(&refused), elapsed, (double)count / elapsed);
  vmta_engine_shutdown(engine, 0);
  vmta_engine_free(engine);
  return 0;
}
