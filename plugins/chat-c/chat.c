// The chat plugin in C: the same `chat.v1` protocol as the Rust chat plugin (plugins/chat, whose
// src/lib.rs documents it), with its state hand-over on reload (the world `stateful-plugin`: see
// the last section, in the Rust chat's snapshot format).
//
// Connect as `/chat?nick=ada&room=lobby` (both optional: defaults `guest-<id>` and `lobby`). A
// client that offers `chat.v1` is answered with it, one that offers only other subprotocols is
// refused with 400, one that offers none is admitted without. Text lines: `/nick NEW`,
// `/join ROOM`, `/who`, anything else is said to the room. Answers are JSON events told apart by
// `type`: welcome, join, leave, presence, message, nick, members, error. Rooms are topics of the
// host. Each room keeps its last 50 messages (at most 64 KiB; all rooms together at most 8 MiB),
// sent as `history` in a `welcome`.
//
// Large rooms: a room of more than 50 members names nobody (naming every join to every member
// costs O(members²) in a join storm). Its members get `presence` with the room's `count` instead
// of `join` and `leave`: at once when it turns large or the count moved by an eighth, else at most
// once a second, with the next event. A `welcome` lists the first 50 members (its `count` says
// how many there are); back at 50, the room gets its whole list as `members`. The clock is WASI's monotonic one
// (clock_gettime, so the component carries the WASI preview 1 adapter).
//
// Differences from the Rust plugin: nicks are unique ignoring the case of ASCII, Latin-1, Latin
// Extended-A, Greek and Cyrillic letters (Rust lower-cases all of Unicode).
//
// Memory: an export owns its arguments and frees them with the generated `*_free` helpers; what
// it returns is heap memory that the generated post-return function frees. Post-return frees
// nothing of length 0, so empty strings and lists are returned as NULL, never allocated.

#define _POSIX_C_SOURCE 200809L // clock_gettime under -std=c11

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "stateful_plugin.h"

// The world is `stateful-plugin`: its generated helpers carry that prefix.
typedef stateful_plugin_string_t plugin_string_t;
#define plugin_string_free stateful_plugin_string_free

#define PROTOCOL "chat.v1"
#define DEFAULT_ROOM "lobby"
#define MAX_NICK 32       // characters
#define MAX_ROOM 64       // characters
#define MAX_TEXT 4096     // bytes
#define HISTORY_LINES 50  // lines a room's history keeps
#define HISTORY_BYTES (64 * 1024)
#define IDLE_HISTORIES 32 // emptied rooms that keep their history
// All rooms' histories together, so that many busy rooms cannot grow the instance to its memory
// cap (a trap): past it, the largest history gives up its oldest lines.
#define TOTAL_HISTORY_BYTES ((size_t)8 << 20)
// A room of more than this many members announces presence as counts, not nicks, and its
// `welcome` lists only this many members.
#define LARGE_ROOM 50
#define PRESENCE_EVERY_NS 1000000000u // at most one `presence` a second, unless moved by an eighth

typedef wsplug_plugin_types_action_t action_t;
typedef exports_wsplug_plugin_handler_list_action_t action_list_t;

// ---------------------------------------------------------------------------------------------
// Memory and byte buffers

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n ? n : 1);
    if (p == NULL) abort();
    return p;
}

static char *xstrndup(const char *s, size_t n) {
    char *p = xrealloc(NULL, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static void buf_reserve(buf_t *b, size_t extra) {
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap * 2 : 64;
    while (cap < b->len + extra) cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

static void buf_put(buf_t *b, const void *data, size_t n) {
    if (n == 0) return;
    buf_reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_puts(buf_t *b, const char *s) { buf_put(b, s, strlen(s)); }

static void buf_putc(buf_t *b, char c) { buf_put(b, &c, 1); }

static void buf_u64(buf_t *b, uint64_t v) {
    char digits[20];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) buf_putc(b, digits[--n]);
}

// Hands the buffer over as a canonical-ABI string (the caller owns it; NULL when empty).
static plugin_string_t buf_take(buf_t *b) {
    plugin_string_t s = {(uint8_t *)b->p, b->len};
    if (b->len == 0) {
        free(b->p);
        s.ptr = NULL;
    }
    *b = (buf_t){0};
    return s;
}

// Hands the buffer over as a NUL-terminated string.
static char *buf_cstr(buf_t *b) {
    buf_putc(b, '\0');
    char *s = b->p;
    *b = (buf_t){0};
    return s;
}

static plugin_string_t string_dup(const char *s) {
    buf_t b = {0};
    buf_puts(&b, s);
    return buf_take(&b);
}

// ---------------------------------------------------------------------------------------------
// UTF-8 and Unicode

// Decodes the character at s[*i] (valid UTF-8) and advances *i past it.
static uint32_t utf8_next(const uint8_t *s, size_t len, size_t *i) {
    uint32_t c = s[*i];
    size_t extra = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : 0;
    if (extra) c &= 0x3F >> extra;
    (*i)++;
    while (extra-- && *i < len) c = (c << 6) | (s[(*i)++] & 0x3F);
    return c;
}

static void buf_utf8(buf_t *b, uint32_t c) {
    if (c < 0x80) {
        buf_putc(b, (char)c);
    } else if (c < 0x800) {
        buf_putc(b, (char)(0xC0 | c >> 6));
        buf_putc(b, (char)(0x80 | (c & 0x3F)));
    } else if (c < 0x10000) {
        buf_putc(b, (char)(0xE0 | c >> 12));
        buf_putc(b, (char)(0x80 | ((c >> 6) & 0x3F)));
        buf_putc(b, (char)(0x80 | (c & 0x3F)));
    } else {
        buf_putc(b, (char)(0xF0 | c >> 18));
        buf_putc(b, (char)(0x80 | ((c >> 12) & 0x3F)));
        buf_putc(b, (char)(0x80 | ((c >> 6) & 0x3F)));
        buf_putc(b, (char)(0x80 | (c & 0x3F)));
    }
}

// Appends bytes that may not be UTF-8, each maximal invalid sequence replaced by U+FFFD (as
// Rust's `String::from_utf8_lossy`).
static void buf_utf8_lossy(buf_t *b, const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        size_t need = 0;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            buf_putc(b, (char)c);
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        }
        size_t j = i + 1;
        bool ok = need > 0;
        for (size_t k = 0; ok && k < need; k++, j++) {
            if (j >= len || s[j] < (k == 0 ? lo : 0x80) || s[j] > (k == 0 ? hi : 0xBF)) ok = false;
            if (!ok) break;
        }
        if (ok) {
            buf_put(b, s + i, need + 1);
            i += need + 1;
        } else {
            buf_utf8(b, 0xFFFD);
            i = j > i + 1 ? j : i + 1;
        }
    }
}

// Rust's `char::is_whitespace` (Unicode White_Space).
static bool is_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

// Rust's `char::is_control` (general category Cc).
static bool is_control(uint32_t c) { return c < 0x20 || (c >= 0x7F && c <= 0x9F); }

// Lower case of ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic capitals.
static uint32_t to_lower(uint32_t c) {
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c < 0xC0) return c;
    if (c <= 0xDE && c != 0xD7) return c + 32;
    if (c >= 0x100 && c <= 0x137 && c != 0x130) return c | 1;
    if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c & 1) ? c + 1 : c;
    if (c >= 0x14A && c <= 0x177) return c | 1;
    if (c == 0x178) return 0xFF;
    if (c == 0x386) return 0x3AC;
    if (c >= 0x388 && c <= 0x38A) return c + 37;
    if (c == 0x38C) return 0x3CC;
    if (c == 0x38E || c == 0x38F) return c + 63;
    if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 32;
    if (c >= 0x400 && c <= 0x40F) return c + 80;
    if (c >= 0x410 && c <= 0x42F) return c + 32;
    return c;
}

static char *lower_dup(const char *s) {
    size_t len = strlen(s), i = 0;
    buf_t b = {0};
    while (i < len) buf_utf8(&b, to_lower(utf8_next((const uint8_t *)s, len, &i)));
    return buf_cstr(&b);
}

static size_t char_count(const uint8_t *s, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++) n += (s[i] & 0xC0) != 0x80;
    return n;
}

// Trims Unicode whitespace at both ends of s[*start..*end).
static void trim(const uint8_t *s, size_t *start, size_t *end) {
    size_t i = *start, first = *end, last = *start;
    while (i < *end) {
        size_t at = i;
        uint32_t c = utf8_next(s, *end, &i);
        if (!is_space(c)) {
            if (first == *end) first = at;
            last = i;
        }
    }
    if (first == *end) {
        *start = *end;
        return;
    }
    *start = first;
    *end = last;
}

// ---------------------------------------------------------------------------------------------
// JSON

// Appends s as a JSON string literal: quotes, backslashes and control characters escaped, and
// U+2028 and U+2029 too (for JavaScript parsers).
static void buf_json(buf_t *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    buf_reserve(b, n + 2);
    buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        switch (c) {
        case '"': buf_puts(b, "\\\""); break;
        case '\\': buf_puts(b, "\\\\"); break;
        case '\n': buf_puts(b, "\\n"); break;
        case '\r': buf_puts(b, "\\r"); break;
        case '\t': buf_puts(b, "\\t"); break;
        case '\b': buf_puts(b, "\\b"); break;
        case '\f': buf_puts(b, "\\f"); break;
        default:
            if (c < 0x20) {
                char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
                buf_put(b, esc, 6);
            } else if (c == 0xE2 && i + 2 < n && (uint8_t)s[i + 1] == 0x80 &&
                       ((uint8_t)s[i + 2] == 0xA8 || (uint8_t)s[i + 2] == 0xA9)) {
                buf_puts(b, (uint8_t)s[i + 2] == 0xA8 ? "\\u2028" : "\\u2029");
                i += 2;
            } else {
                buf_putc(b, (char)c);
            }
        }
    }
    buf_putc(b, '"');
}

// The length buf_json would append.
static size_t json_len(const char *s, size_t n) {
    size_t len = 2;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        if (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f') {
            len += 2;
        } else if (c < 0x20) {
            len += 6;
        } else if (c == 0xE2 && i + 2 < n && (uint8_t)s[i + 1] == 0x80 &&
                   ((uint8_t)s[i + 2] == 0xA8 || (uint8_t)s[i + 2] == 0xA9)) {
            len += 6;
            i += 2;
        } else {
            len += 1;
        }
    }
    return len;
}

// A flat JSON object written field by field, starting with "type".
static void obj_key(buf_t *b, const char *key) {
    buf_putc(b, b->len > 1 ? ',' : '{');
    buf_json(b, key, strlen(key));
    buf_putc(b, ':');
}

static void obj_str(buf_t *b, const char *key, const char *value) {
    obj_key(b, key);
    buf_json(b, value, strlen(value));
}

static buf_t obj_new(const char *type) {
    buf_t b = {0};
    obj_str(&b, "type", type);
    return b;
}

static plugin_string_t obj_finish(buf_t *b) {
    buf_putc(b, '}');
    return buf_take(b);
}

// ---------------------------------------------------------------------------------------------
// Actions

typedef struct {
    action_t *p;
    size_t len, cap;
} actions_t;

static action_t *act_push(actions_t *a) {
    if (a->len == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 4;
        a->p = xrealloc(a->p, a->cap * sizeof *a->p);
    }
    action_t *act = &a->p[a->len++];
    memset(act, 0, sizeof *act);
    return act;
}

static void act_reply(actions_t *a, plugin_string_t json) {
    action_t *act = act_push(a);
    act->tag = WSPLUG_PLUGIN_TYPES_ACTION_REPLY;
    act->val.reply.tag = WSPLUG_PLUGIN_TYPES_MESSAGE_TEXT;
    act->val.reply.val.text = json;
}

// Sends text to every member of `room` (the subscribers of its topic).
static void act_to_room(actions_t *a, const char *room, plugin_string_t json) {
    action_t *act = act_push(a);
    act->tag = WSPLUG_PLUGIN_TYPES_ACTION_SEND;
    act->val.send.to.tag = WSPLUG_PLUGIN_TYPES_TARGET_TOPIC;
    act->val.send.to.val.topic = string_dup(room);
    act->val.send.message.tag = WSPLUG_PLUGIN_TYPES_MESSAGE_TEXT;
    act->val.send.message.val.text = json;
}

static void act_subscribe(actions_t *a, const char *room, bool subscribe) {
    action_t *act = act_push(a);
    act->tag = subscribe ? WSPLUG_PLUGIN_TYPES_ACTION_SUBSCRIBE : WSPLUG_PLUGIN_TYPES_ACTION_UNSUBSCRIBE;
    if (subscribe)
        act->val.subscribe = string_dup(room);
    else
        act->val.unsubscribe = string_dup(room);
}

// An `error` event for the sender; takes `text`.
static void act_error(actions_t *a, buf_t *text) {
    buf_t json = obj_new("error");
    obj_key(&json, "text");
    buf_json(&json, text->p, text->len);
    free(text->p);
    *text = (buf_t){0};
    act_reply(a, obj_finish(&json));
}

static void act_error_str(actions_t *a, const char *text) {
    buf_t b = {0};
    buf_puts(&b, text);
    act_error(a, &b);
}

// Hands the actions over (as the `ptr` and `len` of a generated list type).
static void act_finish(actions_t *a, action_t **ptr, size_t *len) {
    if (a->len == 0) {
        free(a->p);
        a->p = NULL;
    }
    *ptr = a->p;
    *len = a->len;
}

// ---------------------------------------------------------------------------------------------
// Logging

static void log_buf(wsplug_plugin_host_level_t level, buf_t *b) {
    plugin_string_t s = {(uint8_t *)b->p, b->len};
    wsplug_plugin_host_log(level, &s);
    free(b->p);
    *b = (buf_t){0};
}

// Logs "<a><b><c>" at info level.
static void log_info3(const char *a, const char *b, const char *c) {
    buf_t line = {0};
    buf_puts(&line, a);
    buf_puts(&line, b);
    buf_puts(&line, c);
    log_buf(WSPLUG_PLUGIN_HOST_LEVEL_INFO, &line);
}

// ---------------------------------------------------------------------------------------------
// State

typedef struct {
    uint64_t id;
    char *nick;
    char *nick_lower; // nicks are unique ignoring case
    char *room;
} member_t;

typedef struct {
    char *nick;
    char *text;
    size_t text_len;
} line_t;

// A room's recent messages: a ring of at most HISTORY_LINES, oldest at `start`.
typedef struct {
    char *room;
    line_t lines[HISTORY_LINES];
    size_t start, count, bytes;
} history_t;

static member_t *members;
static size_t n_members, cap_members;
static history_t **histories;
static size_t n_histories, cap_histories;
// Rooms with a history but without members, the longest empty first.
static char *idle[IDLE_HISTORIES + 1];
static size_t n_idle;

// A large room: the member count last announced and when.
typedef struct {
    char *room;
    size_t announced;
    uint64_t at;      // monotonic nanoseconds
    bool unannounced; // its count changed since it was last announced
} large_t;

// The large rooms, sorted by name (so presences go out in the Rust plugin's order).
static large_t *larges;
static size_t n_larges, cap_larges;

// Nanoseconds of the monotonic clock. Its origin may be the instance's start: differences are
// taken modulo 2^64, so "a second before" that origin still reads as a second ago.
static uint64_t now_ns(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static member_t *find_member(uint64_t id) {
    for (size_t i = 0; i < n_members; i++)
        if (members[i].id == id) return &members[i];
    return NULL;
}

static size_t room_size(const char *room) {
    size_t n = 0;
    for (size_t i = 0; i < n_members; i++) n += strcmp(members[i].room, room) == 0;
    return n;
}

// Whether `nick` is in use by a connection other than `except` (if `has_except`).
static bool nick_taken(const char *nick, bool has_except, uint64_t except) {
    char *lower = lower_dup(nick);
    bool taken = false;
    for (size_t i = 0; i < n_members && !taken; i++)
        taken = strcmp(members[i].nick_lower, lower) == 0 && !(has_except && members[i].id == except);
    free(lower);
    return taken;
}

// `wanted`, or `wanted-N` with the smallest N >= 2 that is free (cut to fit MAX_NICK).
static char *unique_nick(const char *wanted) {
    if (!nick_taken(wanted, false, 0)) return xstrndup(wanted, strlen(wanted));
    for (uint64_t n = 2;; n++) {
        buf_t suffix = {0};
        buf_putc(&suffix, '-');
        buf_u64(&suffix, n);
        size_t keep = MAX_NICK - suffix.len, i = 0, len = strlen(wanted);
        while (i < len && keep > 0) {
            utf8_next((const uint8_t *)wanted, len, &i);
            keep--;
        }
        buf_t nick = {0};
        buf_put(&nick, wanted, i);
        buf_put(&nick, suffix.p, suffix.len);
        free(suffix.p);
        char *candidate = buf_cstr(&nick);
        if (!nick_taken(candidate, false, 0)) return candidate;
        free(candidate);
    }
}

static history_t *find_history(const char *room) {
    for (size_t i = 0; i < n_histories; i++)
        if (strcmp(histories[i]->room, room) == 0) return histories[i];
    return NULL;
}

static void history_pop(history_t *h) {
    line_t *line = &h->lines[h->start];
    h->bytes -= strlen(line->nick) + line->text_len;
    free(line->nick);
    free(line->text);
    h->start = (h->start + 1) % HISTORY_LINES;
    h->count--;
}

static void history_push(const char *room, const char *nick, const char *text, size_t len) {
    history_t *h = find_history(room);
    if (h == NULL) {
        h = xrealloc(NULL, sizeof *h);
        memset(h, 0, sizeof *h);
        h->room = xstrndup(room, strlen(room));
        if (n_histories == cap_histories) {
            cap_histories = cap_histories ? cap_histories * 2 : 8;
            histories = xrealloc(histories, cap_histories * sizeof *histories);
        }
        histories[n_histories++] = h;
    }
    if (h->count == HISTORY_LINES) history_pop(h);
    line_t *line = &h->lines[(h->start + h->count) % HISTORY_LINES];
    line->nick = xstrndup(nick, strlen(nick));
    line->text = xstrndup(text, len);
    line->text_len = len;
    h->count++;
    h->bytes += strlen(nick) + len;
    // A line is at most MAX_NICK characters and MAX_TEXT bytes, so the newest always stays.
    while (h->bytes > HISTORY_BYTES) history_pop(h);
}

// Drops the oldest lines of the largest histories (the last by name of equal ones, as the Rust
// plugin) while all of them together hold more than TOTAL_HISTORY_BYTES.
static void bound_history(void) {
    size_t total = 0;
    for (size_t i = 0; i < n_histories; i++) total += histories[i]->bytes;
    while (total > TOTAL_HISTORY_BYTES) {
        history_t *largest = NULL;
        for (size_t i = 0; i < n_histories; i++) {
            history_t *h = histories[i];
            if (largest == NULL || h->bytes > largest->bytes ||
                (h->bytes == largest->bytes && strcmp(h->room, largest->room) > 0))
                largest = h;
        }
        if (largest == NULL || largest->count == 0) break;
        size_t before = largest->bytes;
        history_pop(largest);
        total -= before - largest->bytes;
    }
}

static void forget_history(const char *room) {
    for (size_t i = 0; i < n_histories; i++) {
        history_t *h = histories[i];
        if (strcmp(h->room, room) != 0) continue;
        while (h->count) history_pop(h);
        free(h->room);
        free(h);
        histories[i] = histories[--n_histories];
        return;
    }
}

// The `history` of a `welcome`: the most recent lines whose JSON fits in HISTORY_BYTES, oldest
// first.
static void history_json(buf_t *b, const char *room) {
    history_t *h = find_history(room);
    size_t size = 2, keep = 0;
    for (size_t k = h ? h->count : 0; k > 0; k--) {
        line_t *line = &h->lines[(h->start + k - 1) % HISTORY_LINES];
        // {"nick":…,"text":…} and a comma
        size += 17 + json_len(line->nick, strlen(line->nick)) + json_len(line->text, line->text_len) + 1;
        if (size > HISTORY_BYTES) break;
        keep++;
    }
    buf_putc(b, '[');
    for (size_t k = h ? h->count - keep : 0; h && k < h->count; k++) {
        line_t *line = &h->lines[(h->start + k) % HISTORY_LINES];
        if (b->p[b->len - 1] != '[') buf_putc(b, ',');
        buf_puts(b, "{\"nick\":");
        buf_json(b, line->nick, strlen(line->nick));
        buf_puts(b, ",\"text\":");
        buf_json(b, line->text, line->text_len);
        buf_putc(b, '}');
    }
    buf_putc(b, ']');
}

static void idle_remove(const char *room) {
    for (size_t i = 0; i < n_idle; i++) {
        if (strcmp(idle[i], room) == 0) {
            free(idle[i]);
            memmove(&idle[i], &idle[i + 1], (n_idle - i - 1) * sizeof *idle);
            n_idle--;
            return;
        }
    }
}

// Called when a member is about to enter `room`.
static void enter_room(const char *room) {
    if (room_size(room) == 0) idle_remove(room);
}

// Called when a member has left `room`: an emptied room keeps its history while it is among the
// IDLE_HISTORIES most recently emptied.
static void left_room(const char *room) {
    if (room_size(room) != 0 || find_history(room) == NULL) return;
    idle[n_idle++] = xstrndup(room, strlen(room));
    while (n_idle > IDLE_HISTORIES) {
        forget_history(idle[0]);
        free(idle[0]);
        memmove(&idle[0], &idle[1], (n_idle - 1) * sizeof *idle);
        n_idle--;
    }
}

// Registers `id`; takes `nick` and `room`.
static void add_member(uint64_t id, char *nick, char *room) {
    enter_room(room);
    if (n_members == cap_members) {
        cap_members = cap_members ? cap_members * 2 : 16;
        members = xrealloc(members, cap_members * sizeof *members);
    }
    members[n_members++] = (member_t){id, nick, lower_dup(nick), room};
}

// Forgets `id`; returns false if unknown, else its member in *out (the caller frees it).
static bool remove_member(uint64_t id, member_t *out) {
    member_t *m = find_member(id);
    if (m == NULL) return false;
    *out = *m;
    *m = members[--n_members];
    left_room(out->room);
    return true;
}

static void free_member(member_t *m) {
    free(m->nick);
    free(m->nick_lower);
    free(m->room);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// The sorted nicks of `room`, as a JSON array of at most `max`.
static void members_json(buf_t *b, const char *room, size_t max) {
    size_t n = 0;
    char **nicks = xrealloc(NULL, (n_members ? n_members : 1) * sizeof *nicks);
    for (size_t i = 0; i < n_members; i++)
        if (strcmp(members[i].room, room) == 0) nicks[n++] = members[i].nick;
    qsort(nicks, n, sizeof *nicks, cmp_str);
    if (n > max) n = max;
    buf_putc(b, '[');
    for (size_t i = 0; i < n; i++) {
        if (i > 0) buf_putc(b, ',');
        buf_json(b, nicks[i], strlen(nicks[i]));
    }
    buf_putc(b, ']');
    free(nicks);
}

// A `welcome`: with the room's history for a joiner, with "resumed": true for a resumed
// connection. It lists at most LARGE_ROOM members, and counts them all.
static plugin_string_t welcome(const char *nick, const char *room, bool resumed) {
    buf_t json = obj_new("welcome");
    obj_str(&json, "nick", nick);
    obj_str(&json, "room", room);
    obj_key(&json, "members");
    members_json(&json, room, LARGE_ROOM);
    obj_key(&json, "count");
    buf_u64(&json, room_size(room));
    if (resumed) {
        obj_key(&json, "resumed");
        buf_puts(&json, "true");
    } else {
        obj_key(&json, "history");
        history_json(&json, room);
    }
    return obj_finish(&json);
}

// A `join` or `leave` event.
static plugin_string_t join_event(const char *type, const char *nick, const char *room) {
    buf_t json = obj_new(type);
    obj_str(&json, "nick", nick);
    obj_str(&json, "room", room);
    return obj_finish(&json);
}

static large_t *find_large(const char *room) {
    for (size_t i = 0; i < n_larges; i++)
        if (strcmp(larges[i].room, room) == 0) return &larges[i];
    return NULL;
}

// The record of `room`, made (announced 0, a second ago: due at once) if it has none.
static large_t *large_record(const char *room, uint64_t now) {
    large_t *l = find_large(room);
    if (l) return l;
    size_t i = 0;
    while (i < n_larges && strcmp(larges[i].room, room) < 0) i++;
    if (n_larges == cap_larges) {
        cap_larges = cap_larges ? cap_larges * 2 : 4;
        larges = xrealloc(larges, cap_larges * sizeof *larges);
    }
    memmove(&larges[i + 1], &larges[i], (n_larges - i) * sizeof *larges);
    n_larges++;
    larges[i] = (large_t){xstrndup(room, strlen(room)), 0, now - PRESENCE_EVERY_NS, false};
    return &larges[i];
}

// Drops the record of `room`; false if it had none.
static bool drop_large(const char *room) {
    large_t *l = find_large(room);
    if (l == NULL) return false;
    free(l->room);
    memmove(l, l + 1, (size_t)(&larges[n_larges] - (l + 1)) * sizeof *larges);
    n_larges--;
    return true;
}

// A `presence` for each large room whose count changed since it was last announced, if a second
// has passed since then or the count moved by an eighth of what was announced.
static void due_presence(actions_t *a, uint64_t now) {
    for (size_t i = 0; i < n_larges; i++) {
        large_t *l = &larges[i];
        if (!l->unannounced) continue;
        size_t count = room_size(l->room);
        size_t moved = count > l->announced ? count - l->announced : l->announced - count;
        if (moved != 0 && now - l->at < PRESENCE_EVERY_NS && moved * 8 < l->announced) continue;
        l->unannounced = false;
        if (moved == 0) continue;
        l->announced = count;
        l->at = now;
        buf_t json = obj_new("presence");
        obj_str(&json, "room", l->room);
        obj_key(&json, "count");
        buf_u64(&json, count);
        act_to_room(a, l->room, obj_finish(&json));
    }
}

// What tells `room` that `nick` joined or left it (`kind`), the change already made: `join` or
// `leave` in a small room; in a large one, `presence` when due; for a room that just shrank to
// LARGE_ROOM, its whole member list.
static void presence_changed(actions_t *a, const char *room, const char *kind, const char *nick, uint64_t now) {
    size_t count = room_size(room);
    if (count > LARGE_ROOM) {
        large_record(room, now)->unannounced = true;
        due_presence(a, now);
        return;
    }
    if (drop_large(room) || (strcmp(kind, "leave") == 0 && count == LARGE_ROOM)) {
        buf_t json = obj_new("members");
        obj_str(&json, "room", room);
        obj_key(&json, "members");
        members_json(&json, room, SIZE_MAX);
        act_to_room(a, room, obj_finish(&json));
        return;
    }
    act_to_room(a, room, join_event(kind, nick, room));
}

// Checks a nick or room name: 1 to `max` characters, no whitespace or control characters. On
// failure, *err holds the message.
static bool check_name(const char *what, const char *name, size_t len, size_t max, buf_t *err) {
    size_t count = char_count((const uint8_t *)name, len), i = 0;
    bool ok = count >= 1 && count <= max;
    while (ok && i < len) {
        uint32_t c = utf8_next((const uint8_t *)name, len, &i);
        ok = !is_space(c) && !is_control(c);
    }
    if (!ok && err) {
        buf_puts(err, "a ");
        buf_puts(err, what);
        buf_puts(err, " must be 1 to ");
        buf_u64(err, max);
        buf_puts(err, " characters, without spaces or control characters");
    }
    return ok;
}

// Registers connection `id` as `nick` (made unique) in `room`, with the actions that announce
// it: a `join` to the room unless `resumed`, the subscription, and a `welcome`.
static void admit(actions_t *a, uint64_t id, const char *wanted, const char *room, bool resumed) {
    member_t old;
    if (remove_member(id, &old)) free_member(&old);
    char *nick = unique_nick(wanted);
    add_member(id, nick, xstrndup(room, strlen(room)));
    if (!resumed) presence_changed(a, room, "join", nick, now_ns());
    act_subscribe(a, room, true);
    act_reply(a, welcome(nick, room, resumed));
}

// ---------------------------------------------------------------------------------------------
// Commands

static void say(actions_t *a, member_t *m, const char *text, size_t len) {
    if (len > MAX_TEXT) {
        act_error_str(a, "message too long: at most 4096 bytes");
        return;
    }
    size_t start = 0, end = len;
    trim((const uint8_t *)text, &start, &end);
    if (start == end) return;
    buf_t json = obj_new("message");
    obj_str(&json, "nick", m->nick);
    obj_str(&json, "room", m->room);
    obj_key(&json, "text");
    buf_json(&json, text, len);
    history_push(m->room, m->nick, text, len);
    bound_history();
    act_to_room(a, m->room, obj_finish(&json));
}

static void rename_member(actions_t *a, member_t *m, const char *new, size_t len) {
    buf_t err = {0};
    if (len == 0) {
        act_error_str(a, "usage: /nick NEW");
        return;
    }
    if (!check_name("nick", new, len, MAX_NICK, &err)) {
        act_error(a, &err);
        return;
    }
    char *nick = xstrndup(new, len);
    if (strcmp(m->nick, nick) == 0) {
        buf_puts(&err, "you are already ");
        buf_puts(&err, nick);
        act_error(a, &err);
    } else if (nick_taken(nick, true, m->id)) {
        buf_puts(&err, "nick ");
        buf_puts(&err, nick);
        buf_puts(&err, " is taken");
        act_error(a, &err);
    } else {
        char *old = m->nick;
        free(m->nick_lower);
        m->nick = nick;
        m->nick_lower = lower_dup(nick);
        log_info3(old, " is now ", nick);
        buf_t json = obj_new("nick");
        obj_str(&json, "old", old);
        obj_str(&json, "new", nick);
        obj_str(&json, "room", m->room);
        act_to_room(a, m->room, obj_finish(&json));
        free(old);
        return;
    }
    free(nick);
}

static void join_room(actions_t *a, member_t *m, const char *name, size_t len) {
    buf_t err = {0};
    if (len == 0) {
        act_error_str(a, "usage: /join ROOM");
        return;
    }
    if (!check_name("room", name, len, MAX_ROOM, &err)) {
        act_error(a, &err);
        return;
    }
    char *room = xstrndup(name, len);
    if (strcmp(m->room, room) == 0) {
        buf_puts(&err, "you are already in ");
        buf_puts(&err, room);
        act_error(a, &err);
        free(room);
        return;
    }
    // Into the new room first: leaving the old one may forget the history of the longest empty
    // room, and that must not be the new room's.
    enter_room(room);
    char *old = m->room;
    m->room = room;
    left_room(old);
    uint64_t now = now_ns();
    act_subscribe(a, old, false);
    presence_changed(a, old, "leave", m->nick, now);
    presence_changed(a, room, "join", m->nick, now);
    act_subscribe(a, room, true);
    act_reply(a, welcome(m->nick, room, false));
    free(old);
}

static void who(actions_t *a, member_t *m) {
    buf_t json = obj_new("members");
    obj_str(&json, "room", m->room);
    obj_key(&json, "members");
    members_json(&json, m->room, SIZE_MAX);
    act_reply(a, obj_finish(&json));
}

static void on_text(actions_t *a, uint64_t id, const char *text, size_t len) {
    if (len > 0 && text[len - 1] == '\n') {
        len--;
        if (len > 0 && text[len - 1] == '\r') len--;
    }
    if (len > 0 && text[0] == '/') {
        const uint8_t *s = (const uint8_t *)text;
        size_t i = 1, name_end = len, arg_start = len, arg_end = len;
        while (i < len) {
            size_t at = i;
            if (is_space(utf8_next(s, len, &i))) {
                name_end = at;
                arg_start = i;
                break;
            }
        }
        trim(s, &arg_start, &arg_end);
        const char *name = text + 1;
        size_t name_len = name_end - 1;
        const char *arg = text + arg_start;
        size_t arg_len = arg_end - arg_start;
        if (name_len == 4 && memcmp(name, "nick", 4) == 0) {
            rename_member(a, find_member(id), arg, arg_len);
            return;
        }
        if (name_len == 4 && memcmp(name, "join", 4) == 0) {
            join_room(a, find_member(id), arg, arg_len);
            return;
        }
        if (name_len == 3 && memcmp(name, "who", 3) == 0) {
            who(a, find_member(id));
            return;
        }
    }
    say(a, find_member(id), text, len);
}

// ---------------------------------------------------------------------------------------------
// Query strings

static int hex_digit(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Decodes one query component: `+` becomes a space and `%XX` the byte XX (a `%` not followed by
// two hex digits is kept); bytes that are not UTF-8 become U+FFFD.
static buf_t percent_decode(const uint8_t *s, size_t len) {
    buf_t raw = {0}, out = {0};
    for (size_t i = 0; i < len; i++) {
        int hi, lo;
        if (s[i] == '+') {
            buf_putc(&raw, ' ');
        } else if (s[i] == '%' && i + 2 < len && (hi = hex_digit(s[i + 1])) >= 0 &&
                   (lo = hex_digit(s[i + 2])) >= 0) {
            buf_putc(&raw, (char)(hi << 4 | lo));
            i += 2;
        } else {
            buf_putc(&raw, (char)s[i]);
        }
    }
    buf_utf8_lossy(&out, (const uint8_t *)raw.p, raw.len);
    free(raw.p);
    return out;
}

// The first value of query parameter `name` in `path`, decoded; false if there is none.
static bool query_param(const uint8_t *path, size_t len, const char *name, buf_t *value) {
    size_t end = 0, i;
    while (end < len && path[end] != '#') end++;
    for (i = 0; i < end && path[i] != '?'; i++) {}
    if (i == end) return false;
    i++;
    while (i <= end) {
        size_t piece = i;
        while (i < end && path[i] != '&') i++;
        size_t piece_end = i++;
        if (piece == piece_end) continue;
        size_t eq = piece;
        while (eq < piece_end && path[eq] != '=') eq++;
        buf_t key = percent_decode(path + piece, eq - piece);
        bool match = key.len == strlen(name) && memcmp(key.p, name, key.len) == 0;
        free(key.p);
        if (match) {
            size_t v = eq < piece_end ? eq + 1 : piece_end;
            *value = percent_decode(path + v, piece_end - v);
            return true;
        }
    }
    return false;
}

// ---------------------------------------------------------------------------------------------
// The exports

static void reject(exports_wsplug_plugin_handler_admission_t *ret, buf_t *body) {
    ret->tag = WSPLUG_PLUGIN_TYPES_ADMISSION_REJECT;
    ret->val.reject.status = 400;
    ret->val.reject.body = buf_take(body);
}

void exports_wsplug_plugin_handler_on_open(exports_wsplug_plugin_handler_connection_t *conn,
                                           exports_wsplug_plugin_handler_admission_t *ret) {
    bool offered = false;
    for (size_t i = 0; i < conn->protocols.len; i++) {
        plugin_string_t *p = &conn->protocols.ptr[i];
        offered |= p->len == strlen(PROTOCOL) && memcmp(p->ptr, PROTOCOL, p->len) == 0;
    }
    if (!offered && conn->protocols.len > 0 && !conn->resumed) {
        buf_t body = {0};
        buf_puts(&body, "this endpoint requires the " PROTOCOL " subprotocol");
        reject(ret, &body);
        wsplug_plugin_types_connection_free(conn);
        return;
    }
    uint64_t id = conn->id;
    bool resumed = conn->resumed;
    actions_t actions = {0};
    member_t *known = resumed ? find_member(id) : NULL;
    if (known) {
        // Re-attached to this instance that knows it: it keeps its nick and room silently.
        act_subscribe(&actions, known->room, true);
        act_reply(&actions, welcome(known->nick, known->room, true));
        log_info3(known->nick, " is still in ", known->room);
    } else {
        buf_t default_nick = {0}, nick = {0}, room = {0}, err = {0};
        buf_puts(&default_nick, "guest-");
        buf_u64(&default_nick, id);
        if (!query_param(conn->path.ptr, conn->path.len, "nick", &nick) || nick.len == 0) {
            free(nick.p);
            nick = (buf_t){0};
            buf_put(&nick, default_nick.p, default_nick.len);
        }
        if (!query_param(conn->path.ptr, conn->path.len, "room", &room) || room.len == 0) {
            free(room.p);
            room = (buf_t){0};
            buf_puts(&room, DEFAULT_ROOM);
        }
        if (!check_name("nick", nick.p, nick.len, MAX_NICK, &err) ||
            !check_name("room", room.p, room.len, MAX_ROOM, &err)) {
            free(nick.p);
            free(room.p);
            if (!resumed) {
                free(default_nick.p);
                reject(ret, &err);
                wsplug_plugin_types_connection_free(conn);
                return;
            }
            // A resumed connection cannot be refused any more: give it the defaults instead.
            free(err.p);
            nick = default_nick;
            default_nick = (buf_t){0};
            room = (buf_t){0};
            buf_puts(&room, DEFAULT_ROOM);
        }
        free(default_nick.p);
        char *nick_s = buf_cstr(&nick), *room_s = buf_cstr(&room);
        admit(&actions, id, nick_s, room_s, resumed);
        due_presence(&actions, now_ns());
        log_info3(find_member(id)->nick, resumed ? " is back in " : " joined ", room_s);
        free(nick_s);
        free(room_s);
    }
    ret->tag = WSPLUG_PLUGIN_TYPES_ADMISSION_ACCEPT;
    ret->val.accept.subprotocol.is_some = offered;
    if (offered) ret->val.accept.subprotocol.val = string_dup(PROTOCOL);
    act_finish(&actions, &ret->val.accept.actions.ptr, &ret->val.accept.actions.len);
    wsplug_plugin_types_connection_free(conn);
}

void exports_wsplug_plugin_handler_on_message(exports_wsplug_plugin_handler_connection_id_t conn,
                                              exports_wsplug_plugin_handler_message_t *msg,
                                              action_list_t *ret) {
    actions_t actions = {0};
    if (find_member(conn) == NULL) {
        // Not seen opening (the host did not tell this instance): take it in with the defaults
        // rather than fail.
        buf_t line = {0}, nick = {0};
        buf_puts(&line, "message from unknown connection ");
        buf_u64(&line, conn);
        log_buf(WSPLUG_PLUGIN_HOST_LEVEL_WARN, &line);
        buf_puts(&nick, "guest-");
        buf_u64(&nick, conn);
        char *nick_s = buf_cstr(&nick);
        admit(&actions, conn, nick_s, DEFAULT_ROOM, true);
        free(nick_s);
    }
    if (msg->tag == WSPLUG_PLUGIN_TYPES_MESSAGE_TEXT)
        on_text(&actions, conn, (const char *)msg->val.text.ptr, msg->val.text.len);
    else
        act_error_str(&actions, "binary messages are not supported");
    due_presence(&actions, now_ns());
    wsplug_plugin_types_message_free(msg);
    act_finish(&actions, &ret->ptr, &ret->len);
}

void exports_wsplug_plugin_handler_on_close(exports_wsplug_plugin_handler_connection_id_t conn,
                                            uint16_t code, plugin_string_t *reason,
                                            action_list_t *ret) {
    (void)code;
    plugin_string_free(reason);
    actions_t actions = {0};
    member_t m;
    uint64_t now = now_ns();
    if (remove_member(conn, &m)) {
        log_info3(m.nick, " left ", m.room);
        presence_changed(&actions, m.room, "leave", m.nick, now);
        free_member(&m);
    }
    due_presence(&actions, now);
    act_finish(&actions, &ret->ptr, &ret->len);
}

// ---------------------------------------------------------------------------------------------
// State hand-over on reload: the Rust chat's snapshot format, version 1 (plugins/chat/src/
// snapshot.rs), so that nicks, rooms and histories go to the next version whatever its language:
//
//   {"version":1,"members":[{"id":7,"nick":"ada","room":"lobby"}],
//    "history":{"lobby":[{"nick":"ada","text":"hi"}]}}
//
// A restored connection is re-attached silently by on_open (resumed, and known). The large-room
// bookkeeping is not in the snapshot: a restored large room announces its next change at once.

#define SNAPSHOT_VERSION 1

static int cmp_member_id(const void *a, const void *b) {
    uint64_t x = (*(member_t *const *)a)->id, y = (*(member_t *const *)b)->id;
    return x < y ? -1 : x > y;
}

void exports_wsplug_plugin_state_snapshot(stateful_plugin_list_u8_t *ret) {
    buf_t b = {0};
    buf_puts(&b, "{\"version\":1,\"members\":[");
    member_t **sorted = xrealloc(NULL, (n_members ? n_members : 1) * sizeof *sorted);
    for (size_t i = 0; i < n_members; i++) sorted[i] = &members[i];
    qsort(sorted, n_members, sizeof *sorted, cmp_member_id);
    for (size_t i = 0; i < n_members; i++) {
        if (i) buf_putc(&b, ',');
        buf_puts(&b, "{\"id\":");
        buf_u64(&b, sorted[i]->id);
        buf_puts(&b, ",\"nick\":");
        buf_json(&b, sorted[i]->nick, strlen(sorted[i]->nick));
        buf_puts(&b, ",\"room\":");
        buf_json(&b, sorted[i]->room, strlen(sorted[i]->room));
        buf_putc(&b, '}');
    }
    free(sorted);
    buf_puts(&b, "],\"history\":{");
    for (size_t i = 0; i < n_histories; i++) {
        history_t *h = histories[i];
        if (i) buf_putc(&b, ',');
        buf_json(&b, h->room, strlen(h->room));
        buf_puts(&b, ":[");
        for (size_t k = 0; k < h->count; k++) {
            line_t *line = &h->lines[(h->start + k) % HISTORY_LINES];
            if (k) buf_putc(&b, ',');
            buf_puts(&b, "{\"nick\":");
            buf_json(&b, line->nick, strlen(line->nick));
            buf_puts(&b, ",\"text\":");
            buf_json(&b, line->text, line->text_len);
            buf_putc(&b, '}');
        }
        buf_putc(&b, ']');
    }
    buf_puts(&b, "}}");
    plugin_string_t s = buf_take(&b);
    ret->ptr = s.ptr;
    ret->len = s.len;
}

// A JSON reader over the snapshot's bytes: each function returns false at the first error, with
// its message in `err`.
typedef struct {
    const uint8_t *s;
    size_t len, at;
    buf_t err;
} reader_t;

static bool fail_at(reader_t *r, const char *what) {
    if (r->err.len == 0) {
        buf_puts(&r->err, what);
        buf_puts(&r->err, " at byte ");
        buf_u64(&r->err, r->at);
    }
    return false;
}

static void skip_ws(reader_t *r) {
    while (r->at < r->len && (r->s[r->at] == ' ' || r->s[r->at] == '\t' || r->s[r->at] == '\n' || r->s[r->at] == '\r'))
        r->at++;
}

static bool eat(reader_t *r, char c) {
    skip_ws(r);
    if (r->at < r->len && r->s[r->at] == (uint8_t)c) {
        r->at++;
        return true;
    }
    return false;
}

static bool expect(reader_t *r, char c) {
    if (eat(r, c)) return true;
    char what[] = "expected 'x'";
    what[10] = c;
    return fail_at(r, what);
}

static bool read_hex4(reader_t *r, uint32_t *out) {
    if (r->at + 4 > r->len) return fail_at(r, "a short \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        int d = hex_digit(r->s[r->at++]);
        if (d < 0) return fail_at(r, "a bad \\u escape");
        v = v << 4 | (uint32_t)d;
    }
    *out = v;
    return true;
}

// A string into *out (UTF-8, checked; escapes decoded).
static bool read_string(reader_t *r, buf_t *out) {
    if (!expect(r, '"')) return false;
    size_t run = r->at;
    for (;;) {
        if (r->at >= r->len) return fail_at(r, "an unterminated string");
        uint8_t c = r->s[r->at];
        if (c != '"' && c != '\\') {
            if (c < 0x20) return fail_at(r, "a control character in a string");
            r->at++;
            continue;
        }
        // The raw run before it: valid UTF-8 only (what is lossy-decoded must be unchanged).
        buf_t check = {0};
        buf_utf8_lossy(&check, r->s + run, r->at - run);
        bool valid = check.len == r->at - run && memcmp(check.p, r->s + run, check.len) == 0;
        free(check.p);
        if (!valid) return fail_at(r, "invalid UTF-8");
        buf_put(out, r->s + run, r->at - run);
        r->at++;
        if (c == '"') return true;
        if (r->at >= r->len) return fail_at(r, "an unterminated string");
        uint8_t e = r->s[r->at++];
        uint32_t cp;
        switch (e) {
        case '"': case '\\': case '/': buf_putc(out, (char)e); break;
        case 'b': buf_putc(out, '\b'); break;
        case 'f': buf_putc(out, '\f'); break;
        case 'n': buf_putc(out, '\n'); break;
        case 'r': buf_putc(out, '\r'); break;
        case 't': buf_putc(out, '\t'); break;
        case 'u':
            if (!read_hex4(r, &cp)) return false;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t low;
                if (r->at + 2 > r->len || r->s[r->at] != '\\' || r->s[r->at + 1] != 'u')
                    return fail_at(r, "a lone surrogate");
                r->at += 2;
                if (!read_hex4(r, &low)) return false;
                if (low < 0xDC00 || low > 0xDFFF) return fail_at(r, "a lone surrogate");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return fail_at(r, "a lone surrogate");
            }
            buf_utf8(out, cp);
            break;
        default: return fail_at(r, "a bad escape");
        }
        run = r->at;
    }
}

static bool read_u64(reader_t *r, uint64_t *out) {
    skip_ws(r);
    size_t start = r->at;
    uint64_t v = 0;
    while (r->at < r->len && r->s[r->at] >= '0' && r->s[r->at] <= '9') {
        uint64_t d = r->s[r->at++] - '0';
        if (v > (UINT64_MAX - d) / 10) return fail_at(r, "a number out of range");
        v = v * 10 + d;
    }
    if (r->at == start) return fail_at(r, "expected an unsigned integer");
    *out = v;
    return true;
}

// Skips any value (an unknown field's).
static bool skip_value(reader_t *r, int depth) {
    if (depth > 64) return fail_at(r, "nesting too deep");
    skip_ws(r);
    if (r->at >= r->len) return fail_at(r, "expected a value");
    uint8_t c = r->s[r->at];
    if (c == '"') {
        buf_t ignored = {0};
        bool ok = read_string(r, &ignored);
        free(ignored.p);
        return ok;
    }
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        r->at++;
        if (eat(r, close)) return true;
        do {
            if (c == '{') {
                buf_t key = {0};
                bool ok = read_string(r, &key) && expect(r, ':');
                free(key.p);
                if (!ok) return false;
            }
            if (!skip_value(r, depth + 1)) return false;
        } while (eat(r, ','));
        return expect(r, close);
    }
    size_t start = r->at;
    while (r->at < r->len && (strchr("+-.eE", r->s[r->at]) || (r->s[r->at] >= '0' && r->s[r->at] <= '9') ||
                              (r->s[r->at] >= 'a' && r->s[r->at] <= 'z')))
        r->at++;
    return r->at > start || fail_at(r, "expected a value");
}

// What a snapshot holds, read in full before the state is replaced.
typedef struct {
    member_t *members;
    size_t n_members;
    char **rooms; // of the histories, in the snapshot's order
    line_t *lines;
    size_t *line_room; // the index in `rooms` of each line
    size_t n_rooms, n_lines;
} snapshot_t;

static void snapshot_free(snapshot_t *s) {
    for (size_t i = 0; i < s->n_members; i++) free_member(&s->members[i]);
    for (size_t i = 0; i < s->n_rooms; i++) free(s->rooms[i]);
    for (size_t i = 0; i < s->n_lines; i++) {
        free(s->lines[i].nick);
        free(s->lines[i].text);
    }
    free(s->members);
    free(s->rooms);
    free(s->lines);
    free(s->line_room);
}

static bool read_member(reader_t *r, snapshot_t *s) {
    member_t m = {0};
    bool has_id = false, has_nick = false, has_room = false;
    buf_t nick = {0}, room = {0};
    bool ok = expect(r, '{');
    if (ok && !eat(r, '}')) {
        do {
            buf_t key = {0};
            ok = read_string(r, &key) && expect(r, ':');
            if (ok && key.len == 2 && memcmp(key.p, "id", 2) == 0) ok = has_id = read_u64(r, &m.id);
            else if (ok && key.len == 4 && memcmp(key.p, "nick", 4) == 0) ok = has_nick = read_string(r, &nick);
            else if (ok && key.len == 4 && memcmp(key.p, "room", 4) == 0) ok = has_room = read_string(r, &room);
            else if (ok) ok = skip_value(r, 1);
            free(key.p);
        } while (ok && eat(r, ','));
        ok = ok && expect(r, '}');
    }
    buf_t why = {0};
    if (ok && (!has_id || !has_nick || !has_room)) {
        ok = fail_at(r, "a member without \"id\", \"nick\" or \"room\"");
    } else if (ok && (!check_name("nick", nick.p, nick.len, MAX_NICK, &why) ||
                      !check_name("room", room.p, room.len, MAX_ROOM, &why) ||
                      memchr(nick.p, 0, nick.len) || memchr(room.p, 0, room.len))) {
        buf_puts(&r->err, "connection ");
        buf_u64(&r->err, m.id);
        buf_puts(&r->err, ": ");
        if (why.len) buf_put(&r->err, why.p, why.len);
        else buf_puts(&r->err, "a name with a NUL character");
        ok = false;
    }
    free(why.p);
    if (!ok) {
        free(nick.p);
        free(room.p);
        return false;
    }
    m.nick = buf_cstr(&nick);
    m.nick_lower = lower_dup(m.nick);
    m.room = buf_cstr(&room);
    for (size_t i = 0; i < s->n_members; i++) {
        if (strcmp(s->members[i].nick_lower, m.nick_lower) == 0 || s->members[i].id == m.id) {
            buf_puts(&r->err, "connection ");
            buf_u64(&r->err, m.id);
            buf_puts(&r->err, s->members[i].id == m.id ? ": listed twice" : ": its nick is taken twice");
            free_member(&m);
            return false;
        }
    }
    s->members = xrealloc(s->members, (s->n_members + 1) * sizeof *s->members);
    s->members[s->n_members++] = m;
    return true;
}

static bool read_line(reader_t *r, snapshot_t *s, size_t room) {
    buf_t nick = {0}, text = {0};
    bool has_nick = false, has_text = false;
    bool ok = expect(r, '{');
    if (ok && !eat(r, '}')) {
        do {
            buf_t key = {0};
            ok = read_string(r, &key) && expect(r, ':');
            if (ok && key.len == 4 && memcmp(key.p, "nick", 4) == 0) ok = has_nick = read_string(r, &nick);
            else if (ok && key.len == 4 && memcmp(key.p, "text", 4) == 0) ok = has_text = read_string(r, &text);
            else if (ok) ok = skip_value(r, 1);
            free(key.p);
        } while (ok && eat(r, ','));
        ok = ok && expect(r, '}');
    }
    if (ok && (!has_nick || !has_text)) ok = fail_at(r, "a history line without \"nick\" or \"text\"");
    if (ok && memchr(nick.p, 0, nick.len)) ok = fail_at(r, "a nick with a NUL character");
    if (!ok) {
        free(nick.p);
        free(text.p);
        return false;
    }
    size_t text_len = text.len;
    s->lines = xrealloc(s->lines, (s->n_lines + 1) * sizeof *s->lines);
    s->line_room = xrealloc(s->line_room, (s->n_lines + 1) * sizeof *s->line_room);
    s->lines[s->n_lines] = (line_t){buf_cstr(&nick), buf_cstr(&text), text_len};
    s->line_room[s->n_lines++] = room;
    return true;
}

static bool read_snapshot(reader_t *r, snapshot_t *s) {
    bool has_version = false;
    if (!expect(r, '{')) return false;
    if (eat(r, '}')) return fail_at(r, "no \"version\" field");
    do {
        buf_t key = {0};
        bool ok = read_string(r, &key) && expect(r, ':');
        if (ok && key.len == 7 && memcmp(key.p, "version", 7) == 0) {
            uint64_t version = 0;
            ok = has_version = read_u64(r, &version);
            if (ok && version != SNAPSHOT_VERSION) {
                buf_puts(&r->err, "unsupported chat snapshot version ");
                buf_u64(&r->err, version);
                buf_puts(&r->err, " (this version of chat reads version 1)");
                ok = false;
            }
        } else if (ok && key.len == 7 && memcmp(key.p, "members", 7) == 0) {
            ok = expect(r, '[');
            if (ok && !eat(r, ']')) {
                do ok = read_member(r, s);
                while (ok && eat(r, ','));
                ok = ok && expect(r, ']');
            }
        } else if (ok && key.len == 7 && memcmp(key.p, "history", 7) == 0) {
            ok = expect(r, '{');
            if (ok && !eat(r, '}')) {
                do {
                    buf_t room = {0};
                    ok = read_string(r, &room) && expect(r, ':') && expect(r, '[');
                    if (!ok) {
                        free(room.p);
                        break;
                    }
                    s->rooms = xrealloc(s->rooms, (s->n_rooms + 1) * sizeof *s->rooms);
                    s->rooms[s->n_rooms++] = buf_cstr(&room);
                    if (!eat(r, ']')) {
                        do ok = read_line(r, s, s->n_rooms - 1);
                        while (ok && eat(r, ','));
                        ok = ok && expect(r, ']');
                    }
                } while (ok && eat(r, ','));
                ok = ok && expect(r, '}');
            }
        } else if (ok) {
            ok = skip_value(r, 1);
        }
        free(key.p);
        if (!ok) return false;
    } while (eat(r, ','));
    if (!expect(r, '}')) return false;
    skip_ws(r);
    if (r->at != r->len) return fail_at(r, "trailing bytes");
    return has_version || fail_at(r, "no \"version\" field");
}

// Forgets the whole state (before a restore replaces it).
static void clear_state(void) {
    for (size_t i = 0; i < n_members; i++) free_member(&members[i]);
    n_members = 0;
    while (n_histories) forget_history(histories[0]->room);
    for (size_t i = 0; i < n_idle; i++) free(idle[i]);
    n_idle = 0;
    for (size_t i = 0; i < n_larges; i++) free(larges[i].room);
    n_larges = 0;
}

bool exports_wsplug_plugin_state_restore(stateful_plugin_list_u8_t *bytes, plugin_string_t *err) {
    if (bytes->len == 0) {
        stateful_plugin_list_u8_free(bytes);
        return true; // nothing handed over: start fresh
    }
    reader_t r = {bytes->ptr, bytes->len, 0, {0}};
    snapshot_t s = {0};
    bool ok = read_snapshot(&r, &s);
    stateful_plugin_list_u8_free(bytes);
    if (!ok) {
        buf_t why = {0};
        buf_puts(&why, "malformed chat snapshot: ");
        if (r.err.len >= 12 && memcmp(r.err.p, "unsupported ", 12) == 0) why.len = 0;
        else if (r.err.len >= 11 && memcmp(r.err.p, "connection ", 11) == 0) {
            why.len = 0;
            buf_puts(&why, "invalid chat snapshot: ");
        }
        buf_put(&why, r.err.p, r.err.len);
        free(r.err.p);
        snapshot_free(&s);
        *err = buf_take(&why);
        return false;
    }
    clear_state();
    for (size_t i = 0; i < s.n_members; i++) {
        member_t *m = &s.members[i];
        enter_room(m->room);
        if (n_members == cap_members) {
            cap_members = cap_members ? cap_members * 2 : 16;
            members = xrealloc(members, cap_members * sizeof *members);
        }
        members[n_members++] = *m; // moved
    }
    s.n_members = 0;
    for (size_t i = 0; i < s.n_lines; i++) {
        line_t *line = &s.lines[i];
        history_push(s.rooms[s.line_room[i]], line->nick, line->text, line->text_len);
    }
    // Rooms with a history but no members are idle, in the snapshot's order.
    for (size_t i = 0; i < s.n_rooms; i++) {
        if (room_size(s.rooms[i]) == 0 && find_history(s.rooms[i])) left_room(s.rooms[i]);
    }
    bound_history();
    snapshot_free(&s);
    buf_t line = {0};
    buf_puts(&line, "restored: ");
    buf_u64(&line, n_members);
    buf_puts(&line, " connections, ");
    buf_u64(&line, n_histories);
    buf_puts(&line, " histories");
    log_buf(WSPLUG_PLUGIN_HOST_LEVEL_INFO, &line);
    return true;
}
