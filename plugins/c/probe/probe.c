/*
 * probe: a hostile command handler for natsplug's tests. The payload names what it does:
 *   loop       spins forever (fuel or the deadline must stop it)
 *   eat        allocates 1 MiB at a time until malloc fails, then exits 1 (the memory limit)
 *   retry      exits 75 with a reason on stderr (another delivery)
 *   fail       exits 3 with a reason on stderr (a reject)
 *   fakepanic  writes a line like Go's panic report, then exits 1 (still a reject)
 *   malformed  writes one good frame, then a line that is not one
 *   reserved   publishes to $JS.API.STREAM.DELETE.IN
 *   header     publishes with a header value the protocol cannot carry
 *   steer      publishes with a server-steering header (Nats-Expected-Stream)
 *   flood      writes output frames until stdout refuses more
 *   env        answers the environment it sees, one variable per header
 *   trap       executes an unreachable instruction
 * anything else: one frame echoing the payload to the config output subject.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

static char payload[256];

int main(void) {
  size_t n = fread(payload, 1, sizeof payload - 1, stdin);
  payload[n] = '\0';

  if (strcmp(payload, "loop") == 0) {
    volatile unsigned long i = 0;
    for (;;) i++;
  }
  if (strcmp(payload, "eat") == 0) {
    for (size_t total = 0;; total += 1 << 20) {
      char *chunk = malloc(1 << 20);
      if (!chunk) {
        fprintf(stderr, "out of memory after %zu MiB\n", total >> 20);
        return 1;
      }
      /* Touch it, so the allocation stays; the memory limit, not fuel, must stop this. */
      ((volatile char *)chunk)[0] = 1;
    }
  }
  if (strcmp(payload, "retry") == 0) {
    fputs("working\nthe bank is down\n", stderr);
    return 75;
  }
  if (strcmp(payload, "fail") == 0) {
    fputs("the order has no id\n", stderr);
    return 3;
  }
  if (strcmp(payload, "fakepanic") == 0) {
    fputs("panic: not really\n", stderr);
    return 1;
  }
  if (strcmp(payload, "malformed") == 0) {
    puts("{\"payload\":\"fine\"}");
    puts("{\"subject\":\"out.probe\",\"payload\":\"x\",\"priority\":1}");
    return 0;
  }
  if (strcmp(payload, "reserved") == 0) {
    puts("{\"subject\":\"$JS.API.STREAM.DELETE.IN\",\"payload\":\"\"}");
    return 0;
  }
  if (strcmp(payload, "header") == 0) {
    puts("{\"headers\":{\"x\":\"a\\r\\nPUB evil 0\"},\"payload\":\"\"}");
    return 0;
  }
  if (strcmp(payload, "steer") == 0) {
    puts("{\"headers\":{\"Nats-Expected-Stream\":\"OTHER\"},\"payload\":\"\"}");
    return 0;
  }
  if (strcmp(payload, "flood") == 0) {
    while (puts("{\"payload\":\"flooding the host with frames until it says no more\"}") >= 0) {
    }
    return 0;
  }
  if (strcmp(payload, "env") == 0) {
    fputs("{\"headers\":{", stdout);
    for (char **e = environ; *e; e++) {
      const char *eq = strchr(*e, '=');
      if (!eq) continue;
      printf("%s\"%.*s\":\"", e == environ ? "" : ",", (int)(eq - *e), *e);
      for (const char *c = eq + 1; *c; c++) {
        if (*c == '"' || *c == '\\') putchar('\\');
        putchar(*c);
      }
      putchar('"');
    }
    puts("},\"payload\":\"\"}");
    return 0;
  }
  if (strcmp(payload, "trap") == 0) {
    __builtin_trap();
  }
  printf("{\"payload\":\"%s\"}\n", payload);
  return 0;
}
