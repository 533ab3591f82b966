/*
 * natsplug.h: natsplug message handlers in C, on the component contract (the `plugin` world of
 * natsplug.wit). Build the handler, natsplug.c and the bindings in bindings/ (written by
 * wit-bindgen c) with clang for wasm32-wasi as a reactor:
 *
 *   clang --target=wasm32-wasi -mexec-model=reactor -O2 -Ibindings -o app.wasm \
 *     app.c natsplug.c bindings/plugin.c bindings/plugin_component_type.o
 *
 * natsplug loads that core module as a component (or `natsplug componentize app.wasm -o
 * component.wasm` writes the component). A handler is one function:
 *
 *   natsplug_status natsplug_handle(const natsplug_message *msg, natsplug_outputs *out) {
 *     char *subject = natsplug_config("output");
 *     if (!subject) return natsplug_reject("no output in [config]");
 *     natsplug_output_to(out, subject, msg->payload.ptr, msg->payload.len);
 *     free(subject);
 *     return NATSPLUG_OK;
 *   }
 *
 * NATSPLUG_OK publishes the outputs, then acks the message; natsplug_retry() asks for another
 * delivery after the manifest's backoff (or natsplug_retry_after()'s delay); natsplug_reject()
 * dead-letters it. A trap (abort(), an out-of-bounds access) is a trap of the plugin.
 */
#ifndef NATSPLUG_H
#define NATSPLUG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "plugin.h"

/* The message: subject, reply (reply.is_some), headers (ptr, len of name/value pairs), payload
 * (ptr, len: bytes, not NUL-terminated) and, for JetStream, delivery. Strings are
 * plugin_string_t: ptr and len, UTF-8, not NUL-terminated. */
typedef plugin_message_t natsplug_message;

/* One output: subject (is_some false for the reply to a request), headers and payload. */
typedef plugin_output_t natsplug_output;

/* The outputs of the message being handled. */
typedef struct natsplug_outputs natsplug_outputs;

/* What a handler answers. */
typedef enum natsplug_status {
  NATSPLUG_OK,
  NATSPLUG_RETRY,
  NATSPLUG_REJECT,
} natsplug_status;

/* The handler: natsplug calls it once per message. Write this one. */
natsplug_status natsplug_handle(const natsplug_message *msg, natsplug_outputs *out);

/* Adds an output to `subject` (NULL: the reply to the request) with a copy of the payload;
 * returns it, for headers. */
natsplug_output *natsplug_output_to(natsplug_outputs *out, const char *subject,
                                    const void *payload, size_t len);

/* Adds a header to an output (a name may be given several times). */
void natsplug_header_add(natsplug_output *output, const char *name, const char *value);

/* Adds every header of the message to an output, in order. */
void natsplug_headers_copy(natsplug_output *output, const natsplug_message *msg);

/* The first value of header `name` of the message, or NULL; *len is set to its length. */
const uint8_t *natsplug_header(const natsplug_message *msg, const char *name, size_t *len);

/* A retry: another delivery after the manifest's backoff. The reason is printf-formatted. */
natsplug_status natsplug_retry(const char *format, ...) __attribute__((format(printf, 1, 2)));

/* A retry after delay_ms milliseconds. */
natsplug_status natsplug_retry_after(uint64_t delay_ms, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* A reject: the message is dead-lettered with this reason, then terminated. */
natsplug_status natsplug_reject(const char *format, ...) __attribute__((format(printf, 1, 2)));

/* The manifest's [config] value for `key`, NUL-terminated and malloc'd (free it), or NULL. */
char *natsplug_config(const char *key);

/* Log levels. */
typedef enum natsplug_level {
  NATSPLUG_TRACE = NATSPLUG_PLUGIN_HOST_LEVEL_TRACE,
  NATSPLUG_DEBUG = NATSPLUG_PLUGIN_HOST_LEVEL_DEBUG,
  NATSPLUG_INFO = NATSPLUG_PLUGIN_HOST_LEVEL_INFO,
  NATSPLUG_WARN = NATSPLUG_PLUGIN_HOST_LEVEL_WARN,
  NATSPLUG_ERROR = NATSPLUG_PLUGIN_HOST_LEVEL_ERROR,
} natsplug_level;

/* A line in the host's log, tagged with the plugin and the message. printf-formatted. */
void natsplug_log(natsplug_level level, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* Tells the host the handler is still working (it sends progress acks on its own anyway). */
void natsplug_in_progress(void);

#endif
