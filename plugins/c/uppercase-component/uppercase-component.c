/*
 * uppercase-component: the C twin of plugins/uppercase on the component contract (the C SDK,
 * guest-sdk/c), where plugins/c/uppercase is the same handler as a command. One output, the
 * payload upper-cased with towupper(3) in the C.UTF-8 locale, published to the subject named
 * by the output config value (default: the input subject with ".upper" appended), with the
 * input's headers and, when the marker config value is set, a marker header. A payload that
 * is not UTF-8 is rejected.
 */
#include <limits.h>
#include <locale.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>
#include <wctype.h>

#include "natsplug.h"

natsplug_status natsplug_handle(const natsplug_message *msg, natsplug_outputs *out) {
  setlocale(LC_CTYPE, "C.UTF-8");
  const char *payload = (const char *)msg->payload.ptr;
  size_t len = msg->payload.len, in = 0, n_out = 0;
  char *upper = malloc(len * MB_LEN_MAX + 1);
  if (!upper) return natsplug_reject("the payload is too large to upper-case");
  mbstate_t state = {0};
  while (in < len) {
    wchar_t wc;
    size_t n = mbrtowc(&wc, payload + in, len - in, &state);
    if (n == (size_t)-1 || n == (size_t)-2) {
      free(upper);
      return natsplug_reject("the payload is not UTF-8 (at byte %zu)", in);
    }
    in += n ? n : 1;
    n_out += wcrtomb(upper + n_out, (wchar_t)towupper((wint_t)wc), NULL);
  }

  char *subject = natsplug_config("output");
  if (!subject) {
    subject = malloc(msg->subject.len + sizeof ".upper");
    if (!subject) abort();
    memcpy(subject, msg->subject.ptr, msg->subject.len);
    strcpy(subject + msg->subject.len, ".upper");
  }
  natsplug_output *output = natsplug_output_to(out, subject, upper, n_out);
  natsplug_headers_copy(output, msg);
  char *marker = natsplug_config("marker");
  if (marker) natsplug_header_add(output, "marker", marker);
  free(marker);
  free(subject);
  free(upper);
  return NATSPLUG_OK;
}
