/*
 * The C ABI from a C program: built with `cc` against include/glint.h and libglint by
 * hosts/tests/c_abi.rs, also run under valgrind there.
 *
 * usage: glint_test MODEL TRUNCATED_MODEL PROMPT N_TOKENS THREADS
 * Prints the greedy answer to PROMPT (N_TOKENS at most) and a newline on stdout (the
 * caller compares it with `glint run --temp 0`); checks everything else itself and
 * exits non-zero with a message on stderr at the first failure.
 */
#include "glint.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond, ...)                                                                  \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                     \
      fprintf(stderr, __VA_ARGS__);                                                       \
      fprintf(stderr, "\n");                                                              \
      failures++;                                                                         \
    }                                                                                     \
  } while (0)

/* Collects streamed text. */
typedef struct {
  char *data;
  size_t len;
  size_t calls;
} text_buf;

static int collect(const char *text, size_t len, void *user) {
  text_buf *b = user;
  char *grown = realloc(b->data, b->len + len + 1);
  if (!grown) return 1;
  b->data = grown;
  memcpy(b->data + b->len, text, len);
  b->len += len;
  b->data[b->len] = 0;
  b->calls++;
  return 0;
}

static int stop_at_once(const char *text, size_t len, void *user) {
  (void)text;
  (void)len;
  (*(int *)user)++;
  return 1;
}

static int progress_calls = 0;
static float last_fraction = -1;

static int on_progress(float fraction, void *user) {
  (void)user;
  progress_calls++;
  last_fraction = fraction;
  return 0;
}

/* Cancel from a second thread: the token callback hands the first token to the
 * canceller and waits until glint_cancel has returned, so the generation must stop
 * before the next token. */
typedef struct {
  glint_session *session;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int first_token_seen;
  int cancelled;
  size_t tokens;
} cancel_ctx;

static void *canceller(void *arg) {
  cancel_ctx *c = arg;
  pthread_mutex_lock(&c->lock);
  while (!c->first_token_seen) pthread_cond_wait(&c->cond, &c->lock);
  glint_cancel(c->session);
  c->cancelled = 1;
  pthread_cond_broadcast(&c->cond);
  pthread_mutex_unlock(&c->lock);
  return NULL;
}

static int wait_for_cancel(const char *text, size_t len, void *user) {
  (void)text;
  (void)len;
  cancel_ctx *c = user;
  pthread_mutex_lock(&c->lock);
  c->tokens++;
  c->first_token_seen = 1;
  pthread_cond_broadcast(&c->cond);
  while (!c->cancelled) pthread_cond_wait(&c->cond, &c->lock);
  pthread_mutex_unlock(&c->lock);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s MODEL TRUNCATED_MODEL PROMPT N_TOKENS THREADS\n", argv[0]);
    return 2;
  }
  const char *model_path = argv[1], *truncated = argv[2], *prompt = argv[3];
  unsigned n_tokens = (unsigned)atoi(argv[4]);
  glint_error err;

  CHECK(strlen(glint_version()) > 0, "empty version");

  /* Failures are codes with messages, not crashes. */
  CHECK(glint_model_load("/nonexistent/model.glint", NULL, &err) == NULL, "loaded nothing");
  CHECK(err.code == GLINT_STATUS_IO, "missing file: code %d (%s)", err.code,
        glint_error_message(&err));
  CHECK(strstr(glint_error_message(&err), "nonexistent") != NULL, "message: %s",
        glint_error_message(&err));
  CHECK(glint_model_load(truncated, NULL, &err) == NULL, "loaded a truncated file");
  CHECK(err.code == GLINT_STATUS_BAD_MODEL, "truncated: code %d (%s)", err.code,
        glint_error_message(&err));
  CHECK(glint_model_load(NULL, NULL, &err) == NULL && err.code == GLINT_STATUS_NULL_ARGUMENT,
        "NULL path: code %d", err.code);
  CHECK(glint_model_load("/nonexistent", NULL, NULL) == NULL, "NULL err is fine");
  glint_model_options bad = glint_model_options_default();
  bad.kv_type = 42;
  CHECK(glint_model_load(model_path, &bad, &err) == NULL &&
            err.code == GLINT_STATUS_INVALID_ARGUMENT,
        "kv_type 42: code %d", err.code);

  /* Load with options and a progress callback. */
  glint_model_options opts = glint_model_options_default();
  opts.threads = (uint32_t)atoi(argv[5]);
  opts.progress = on_progress;
  glint_model *model = glint_model_load(model_path, &opts, &err);
  CHECK(model != NULL && err.code == GLINT_STATUS_OK, "load: %s", glint_error_message(&err));
  if (!model) return 1;
  CHECK(progress_calls >= 2 && last_fraction == 1.0f, "progress: %d calls, last %f",
        progress_calls, last_fraction);

  /* The greedy answer, streamed. */
  glint_session *session = glint_session_new(model, 0, &err);
  CHECK(session != NULL, "session: %s", glint_error_message(&err));
  glint_generate_params greedy = glint_default_params(model);
  greedy.temperature = 0;
  greedy.max_tokens = n_tokens;
  text_buf answer = {0};
  glint_stats stats;
  int rc = glint_generate(session, prompt, &greedy, collect, &answer, &stats);
  CHECK(rc == GLINT_STATUS_OK, "generate: %d %s", rc, glint_last_error_message());
  CHECK(stats.generated_tokens > 0 && stats.generated_tokens <= n_tokens,
        "generated %llu", (unsigned long long)stats.generated_tokens);
  CHECK(stats.prompt_tokens > 0 && stats.prefill_tok_s > 0, "prompt stats");
  CHECK(answer.calls > 0 && answer.len > 0, "no text streamed");
  printf("%s\n", answer.data ? answer.data : "");
  fflush(stdout);
  free(answer.data);

  /* A failed call leaves the session usable; reset forgets the context. */
  CHECK(glint_generate(session, NULL, NULL, NULL, NULL, NULL) == GLINT_STATUS_NULL_ARGUMENT,
        "NULL prompt");
  CHECK(glint_session_reset(session) == GLINT_STATUS_OK, "reset");

  /* The callback stops generation by returning non-zero. */
  int calls = 0;
  rc = glint_generate(session, prompt, &greedy, stop_at_once, &calls, &stats);
  CHECK(rc == GLINT_STATUS_OK && calls == 1 && stats.generated_tokens == 1 &&
            stats.stop_reason == GLINT_STOP_REASON_CANCELLED,
        "stop from the callback: rc %d, %d calls, %llu tokens, reason %d", rc, calls,
        (unsigned long long)stats.generated_tokens, stats.stop_reason);

  /* Cancel from a second thread stops within one decode step. */
  glint_session_reset(session);
  cancel_ctx c = {.session = session};
  pthread_mutex_init(&c.lock, NULL);
  pthread_cond_init(&c.cond, NULL);
  pthread_t t;
  pthread_create(&t, NULL, canceller, &c);
  glint_generate_params longer = greedy;
  longer.max_tokens = 64;
  rc = glint_chat(session, "Tell me a long story about a dragon.", &longer, wait_for_cancel, &c,
                  &stats);
  /* Releases the canceller if no text came (then the checks below fail). */
  pthread_mutex_lock(&c.lock);
  c.first_token_seen = 1;
  pthread_cond_broadcast(&c.cond);
  pthread_mutex_unlock(&c.lock);
  pthread_join(t, NULL);
  CHECK(rc == GLINT_STATUS_OK && stats.stop_reason == GLINT_STOP_REASON_CANCELLED &&
            stats.generated_tokens == 1 && c.tokens == 1,
        "cancel: rc %d, reason %d, %llu tokens, %zu streamed", rc, stats.stop_reason,
        (unsigned long long)stats.generated_tokens, c.tokens);
  pthread_mutex_destroy(&c.lock);
  pthread_cond_destroy(&c.cond);

  /* A cancel while idle stops the next generation at once, and only that one. */
  glint_cancel(session);
  rc = glint_generate(session, " Again.", &greedy, NULL, NULL, &stats);
  CHECK(rc == GLINT_STATUS_OK && stats.generated_tokens == 0 &&
            stats.stop_reason == GLINT_STOP_REASON_CANCELLED,
        "idle cancel: rc %d, %llu tokens", rc, (unsigned long long)stats.generated_tokens);
  greedy.max_tokens = 1;
  rc = glint_generate(session, " Again.", &greedy, NULL, NULL, &stats);
  CHECK(rc == GLINT_STATUS_OK && stats.generated_tokens == 1, "after the cancel: rc %d", rc);

  /* A context too small for the prompt. */
  glint_session *tiny = glint_session_new(model, 4, &err);
  CHECK(tiny != NULL, "tiny session: %s", glint_error_message(&err));
  rc = glint_generate(tiny, prompt, NULL, NULL, NULL, NULL);
  CHECK(rc == GLINT_STATUS_PROMPT_TOO_LONG, "tiny context: %d", rc);
  CHECK(strstr(glint_last_error_message(), "does not fit") != NULL, "message: %s",
        glint_last_error_message());
  glint_session_free(tiny);

  /* More context than the model's; a memory budget too small for a session. */
  CHECK(glint_session_new(model, 1u << 30, &err) == NULL &&
            err.code == GLINT_STATUS_INVALID_ARGUMENT,
        "context beyond the model's: %d %s", err.code, glint_error_message(&err));
  glint_model_options small = opts;
  small.mem_budget = 1 << 20;
  glint_model *budgeted = glint_model_load(model_path, &small, &err);
  CHECK(budgeted != NULL, "load with a budget: %s", glint_error_message(&err));
  CHECK(glint_session_new(budgeted, 0, &err) == NULL && err.code == GLINT_STATUS_OVER_BUDGET &&
            strstr(glint_error_message(&err), "budget") != NULL,
        "over budget: %d %s", err.code, glint_error_message(&err));
  glint_model_free(budgeted);

  /* A chat turn through the model's template. */
  greedy.max_tokens = 2;
  rc = glint_chat(session, "Hi!", &greedy, NULL, NULL, &stats);
  CHECK(rc == GLINT_STATUS_OK && stats.generated_tokens > 0, "chat: %d %s", rc,
        glint_last_error_message());

  /* Freed and made-up handles are refused, not dereferenced. */
  glint_session_free(session);
  rc = glint_generate(session, prompt, NULL, NULL, NULL, NULL);
  CHECK(rc == GLINT_STATUS_INVALID_HANDLE, "freed session: %d", rc);
  glint_session_free(session); /* twice: nothing happens */
  glint_cancel(session);
  glint_session *garbage = (glint_session *)(uintptr_t)0x12345678;
  CHECK(glint_generate(garbage, prompt, NULL, NULL, NULL, NULL) == GLINT_STATUS_INVALID_HANDLE,
        "made-up session");
  CHECK(glint_generate(NULL, prompt, NULL, NULL, NULL, NULL) == GLINT_STATUS_INVALID_HANDLE,
        "NULL session");

  /* A model from a file descriptor and a range; the caller keeps its descriptor. */
  int fd = open(model_path, O_RDONLY);
  struct stat st;
  CHECK(fd >= 0 && fstat(fd, &st) == 0, "open the model");
  glint_model *from_fd = glint_model_load_fd(fd, 0, (uint64_t)st.st_size, &opts, &err);
  CHECK(from_fd != NULL, "load_fd: %s", glint_error_message(&err));
  CHECK(glint_model_load_fd(fd, 1, (uint64_t)st.st_size, NULL, &err) == NULL &&
            err.code == GLINT_STATUS_BAD_MODEL,
        "range past the end: %d %s", err.code, glint_error_message(&err));
  CHECK(glint_model_load_fd(-1, 0, 1, NULL, &err) == NULL &&
            err.code == GLINT_STATUS_INVALID_ARGUMENT,
        "fd -1: %d", err.code);
  close(fd);

  /* A session outlives its model's handle. */
  glint_session *s2 = glint_session_new(from_fd, 64, &err);
  CHECK(s2 != NULL, "session on the fd model: %s", glint_error_message(&err));
  glint_model_free(from_fd);
  glint_model_free(from_fd); /* twice: nothing happens */
  CHECK(glint_session_new(from_fd, 64, &err) == NULL && err.code == GLINT_STATUS_INVALID_HANDLE,
        "freed model: %d", err.code);
  rc = glint_generate(s2, prompt, &greedy, NULL, NULL, &stats);
  CHECK(rc == GLINT_STATUS_OK && stats.generated_tokens > 0, "after the model's free: %d %s", rc,
        glint_last_error_message());
  glint_session_free(s2);

  glint_model_free(model);
  if (failures) fprintf(stderr, "%d checks failed\n", failures);
  return failures ? 1 : 0;
}
