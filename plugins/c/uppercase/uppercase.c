/*
 * uppercase: the C twin of plugins/uppercase, on natsplug's command contract. One output, the
 * payload upper-cased with towupper(3) in the C.UTF-8 locale, published to the subject named
 * by the output config value (default: the input subject with ".upper" appended). Input
 * headers are carried over; a marker config value is set as the marker header. A payload
 * that is not UTF-8 is rejected.
 *
 * Upper-casing is the C library's: wasi-libc's towupper (musl's table), one character for one,
 * so "ß" becomes the capital "ẞ" where Rust, Python and JavaScript give "SS" and Go keeps "ß".
 */
#include <limits.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>
#include <wctype.h>

/* Reads all of stdin; sets *len. */
static char *read_all(FILE *in, size_t *len) {
  size_t cap = 4096, n = 0, got;
  char *buf = malloc(cap);
  while (buf && (got = fread(buf + n, 1, cap - n, in)) > 0) {
    n += got;
    if (n == cap) {
      char *bigger = realloc(buf, cap *= 2);
      if (!bigger) {
        free(buf);
        return NULL;
      }
      buf = bigger;
    }
  }
  *len = n;
  return buf;
}

/* Writes s (n bytes of UTF-8) as a JSON string. */
static void json_string(const char *s, size_t n) {
  putchar('"');
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\')
      printf("\\%c", c);
    else if (c < 0x20)
      printf("\\u%04x", c);
    else
      putchar(c);
  }
  putchar('"');
}

int main(void) {
  setlocale(LC_CTYPE, "C.UTF-8");
  size_t len;
  char *payload = read_all(stdin, &len);
  char *upper = malloc(len * MB_LEN_MAX + 1);
  if (!payload || !upper) {
    fputs("out of memory\n", stderr);
    return 1;
  }

  size_t in = 0, out = 0;
  mbstate_t state = {0};
  while (in < len) {
    wchar_t wc;
    size_t n = mbrtowc(&wc, payload + in, len - in, &state);
    if (n == (size_t)-1 || n == (size_t)-2 || (n == 0 && payload[in] != '\0')) {
      fprintf(stderr, "the payload is not UTF-8 (at byte %zu)\n", in);
      return 1;
    }
    in += n ? n : 1;
    out += wcrtomb(upper + out, (wchar_t)towupper((wint_t)wc), NULL);
  }

  const char *subject = getenv("NATSPLUG_SUBJECT");
  const char *output = getenv("NATSPLUG_CONFIG_OUTPUT");
  const char *headers = getenv("NATSPLUG_HEADERS");
  const char *marker = getenv("NATSPLUG_CONFIG_MARKER");
  if (!subject || !headers) {
    fputs("NATSPLUG_SUBJECT is not set: is this program run by natsplug?\n", stderr);
    return 1;
  }

  fputs("{\"subject\":", stdout);
  if (output) {
    json_string(output, strlen(output));
  } else {
    size_t slen = strlen(subject);
    char *upper_subject = malloc(slen + sizeof ".upper");
    if (!upper_subject) {
      fputs("out of memory\n", stderr);
      return 1;
    }
    memcpy(upper_subject, subject, slen);
    memcpy(upper_subject + slen, ".upper", sizeof ".upper");
    json_string(upper_subject, slen + strlen(".upper"));
  }
  /* The input's headers, a JSON object already; the marker goes last, where it replaces an
   * input header of that name (in a frame, the last of a repeated name counts). */
  fputs(",\"headers\":", stdout);
  size_t hlen = strlen(headers);
  if (marker) {
    fwrite(headers, 1, hlen - 1, stdout);
    fputs(strcmp(headers, "{}") == 0 ? "\"marker\":" : ",\"marker\":", stdout);
    json_string(marker, strlen(marker));
    putchar('}');
  } else {
    fputs(headers, stdout);
  }
  fputs(",\"payload\":", stdout);
  json_string(upper, out);
  fputs("}\n", stdout);
  return 0;
}
