/*
 * natsplug.c: the C SDK's side of the `plugin` world: `handle` calls natsplug_handle() and
 * turns its outputs and status into the world's result. Everything handed to the host is
 * malloc'd: the bindings free it once the host has copied it.
 */
#include "natsplug.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct natsplug_outputs {
  plugin_list_output_t list;
  size_t cap;
};

/* The reason and delay of the retry or reject being returned. */
static struct {
  char *reason;
  bool has_delay;
  uint64_t delay_ms;
} failure;

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) abort(); /* a trap: natsplug reports it, the memory limit counted it */
  return p;
}

static void copy_bytes(uint8_t **ptr, size_t *len, const void *bytes, size_t n) {
  *len = n;
  *ptr = NULL;
  if (n > 0) {
    *ptr = xmalloc(n);
    memcpy(*ptr, bytes, n);
  }
}

static void copy_string(plugin_string_t *to, const char *s) {
  copy_bytes(&to->ptr, &to->len, s, strlen(s));
}

natsplug_output *natsplug_output_to(natsplug_outputs *out, const char *subject,
                                    const void *payload, size_t len) {
  if (out->list.len == out->cap) {
    out->cap = out->cap ? out->cap * 2 : 4;
    out->list.ptr = realloc(out->list.ptr, out->cap * sizeof *out->list.ptr);
    if (!out->list.ptr) abort();
  }
  natsplug_output *o = &out->list.ptr[out->list.len++];
  memset(o, 0, sizeof *o);
  if (subject) {
    o->subject.is_some = true;
    copy_string(&o->subject.val, subject);
  }
  copy_bytes(&o->payload.ptr, &o->payload.len, payload, len);
  return o;
}

static void header_push(natsplug_output *output, const void *name, size_t name_len,
                        const void *value, size_t value_len) {
  natsplug_plugin_types_list_header_t *h = &output->headers;
  /* Grows one at a time: outputs carry few headers. */
  h->ptr = realloc(h->ptr, (h->len + 1) * sizeof *h->ptr);
  if (!h->ptr) abort();
  natsplug_plugin_types_header_t *line = &h->ptr[h->len++];
  copy_bytes(&line->name.ptr, &line->name.len, name, name_len);
  copy_bytes(&line->value.ptr, &line->value.len, value, value_len);
}

void natsplug_header_add(natsplug_output *output, const char *name, const char *value) {
  header_push(output, name, strlen(name), value, strlen(value));
}

void natsplug_headers_copy(natsplug_output *output, const natsplug_message *msg) {
  for (size_t i = 0; i < msg->headers.len; i++) {
    const natsplug_plugin_types_header_t *line = &msg->headers.ptr[i];
    header_push(output, line->name.ptr, line->name.len, line->value.ptr, line->value.len);
  }
}

const uint8_t *natsplug_header(const natsplug_message *msg, const char *name, size_t *len) {
  size_t n = strlen(name);
  for (size_t i = 0; i < msg->headers.len; i++) {
    const natsplug_plugin_types_header_t *line = &msg->headers.ptr[i];
    if (line->name.len == n && memcmp(line->name.ptr, name, n) == 0) {
      *len = line->value.len;
      return line->value.ptr;
    }
  }
  return NULL;
}

static char *vformat(const char *format, va_list args) {
  va_list again;
  va_copy(again, args);
  int n = vsnprintf(NULL, 0, format, args);
  char *text = xmalloc(n > 0 ? (size_t)n + 1 : 1);
  vsnprintf(text, n > 0 ? (size_t)n + 1 : 1, format, again);
  va_end(again);
  return text;
}

static natsplug_status fail(natsplug_status status, bool has_delay, uint64_t delay_ms,
                            const char *format, va_list args) {
  free(failure.reason);
  failure.reason = vformat(format, args);
  failure.has_delay = has_delay;
  failure.delay_ms = delay_ms;
  return status;
}

natsplug_status natsplug_retry(const char *format, ...) {
  va_list args;
  va_start(args, format);
  natsplug_status status = fail(NATSPLUG_RETRY, false, 0, format, args);
  va_end(args);
  return status;
}

natsplug_status natsplug_retry_after(uint64_t delay_ms, const char *format, ...) {
  va_list args;
  va_start(args, format);
  natsplug_status status = fail(NATSPLUG_RETRY, true, delay_ms, format, args);
  va_end(args);
  return status;
}

natsplug_status natsplug_reject(const char *format, ...) {
  va_list args;
  va_start(args, format);
  natsplug_status status = fail(NATSPLUG_REJECT, false, 0, format, args);
  va_end(args);
  return status;
}

char *natsplug_config(const char *key) {
  plugin_string_t k = {(uint8_t *)key, strlen(key)};
  plugin_string_t value;
  if (!natsplug_plugin_host_config(&k, &value)) return NULL;
  char *text = xmalloc(value.len + 1);
  memcpy(text, value.ptr, value.len);
  text[value.len] = '\0';
  plugin_string_free(&value);
  return text;
}

void natsplug_log(natsplug_level level, const char *format, ...) {
  va_list args;
  va_start(args, format);
  char *text = vformat(format, args);
  va_end(args);
  plugin_string_t line = {(uint8_t *)text, strlen(text)};
  natsplug_plugin_host_log((natsplug_plugin_host_level_t)level, &line);
  free(text);
}

void natsplug_in_progress(void) { natsplug_plugin_host_in_progress(); }

bool exports_plugin_handle(plugin_message_t *message, plugin_list_output_t *ret,
                           plugin_failure_t *err) {
  natsplug_outputs out = {0};
  free(failure.reason);
  failure.reason = NULL;
  natsplug_status status = natsplug_handle(message, &out);
  plugin_message_free(message);
  if (status == NATSPLUG_OK) {
    *ret = out.list;
    return true;
  }
  plugin_list_output_free(&out.list);
  const char *fallback = status == NATSPLUG_RETRY ? "retry" : "reject";
  plugin_string_t reason;
  if (failure.reason) {
    reason = (plugin_string_t){(uint8_t *)failure.reason, strlen(failure.reason)};
    failure.reason = NULL; /* now the host's, freed by the bindings */
  } else {
    copy_string(&reason, fallback);
  }
  if (status == NATSPLUG_RETRY) {
    err->tag = NATSPLUG_PLUGIN_TYPES_FAILURE_RETRY;
    err->val.retry.reason = reason;
    err->val.retry.delay_ms.is_some = failure.has_delay;
    err->val.retry.delay_ms.val = failure.delay_ms;
  } else {
    err->tag = NATSPLUG_PLUGIN_TYPES_FAILURE_REJECT;
    err->val.reject = reason;
  }
  return false;
}
