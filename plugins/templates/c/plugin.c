// {{name}}: a wsplug plugin in C. It admits every connection, answers each text message with the
// same text with its ASCII letters in upper case, and sends binary messages back unchanged.
//
// Edit, run ./build.sh, and a running `wsplug --route /{{name}}={{name}}.wasm` picks the new version
// up without dropping a connection. The bindings (plugin.h) are generated from wit/wsplug.wit by
// the build, into build/.
//
// Ownership follows the canonical ABI as wit-bindgen's C generator lays it out: an export owns
// its arguments (free them with the generated `*_free` helpers, or hand them on), and what it
// returns must be heap memory, which the generated post-return function frees after the host has
// copied it.

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin.h"

typedef exports_wsplug_plugin_handler_list_action_t action_list_t;

// A line in the server's log.
static void log_info(const char *text) {
    plugin_string_t s;
    plugin_string_set(&s, text);
    wsplug_plugin_host_log(WSPLUG_PLUGIN_HOST_LEVEL_INFO, &s);
}

void exports_wsplug_plugin_handler_on_open(exports_wsplug_plugin_handler_connection_t *conn,
                                           exports_wsplug_plugin_handler_admission_t *ret) {
    char line[96];
    snprintf(line, sizeof line, "connection %llu opened", (unsigned long long)conn->id);
    log_info(line);
    wsplug_plugin_types_connection_free(conn);
    ret->tag = WSPLUG_PLUGIN_TYPES_ADMISSION_ACCEPT;
    ret->val.accept.subprotocol.is_some = false;
    ret->val.accept.actions.ptr = NULL;
    ret->val.accept.actions.len = 0;
}

void exports_wsplug_plugin_handler_on_message(exports_wsplug_plugin_handler_connection_id_t conn,
                                              exports_wsplug_plugin_handler_message_t *msg,
                                              action_list_t *ret) {
    (void)conn;
    if (msg->tag == WSPLUG_PLUGIN_TYPES_MESSAGE_TEXT) {
        uint8_t *text = msg->val.text.ptr;
        for (size_t i = 0; i < msg->val.text.len; i++) {
            if (text[i] >= 'a' && text[i] <= 'z') text[i] -= 'a' - 'A';
        }
    }
    wsplug_plugin_types_action_t *reply = malloc(sizeof *reply);
    if (reply == NULL) abort();
    reply->tag = WSPLUG_PLUGIN_TYPES_ACTION_REPLY;
    // The message's buffer moves into the reply, uncopied: post-return frees it.
    reply->val.reply = *msg;
    ret->ptr = reply;
    ret->len = 1;
}

void exports_wsplug_plugin_handler_on_close(exports_wsplug_plugin_handler_connection_id_t conn,
                                            uint16_t code, plugin_string_t *reason,
                                            action_list_t *ret) {
    (void)conn;
    (void)code;
    plugin_string_free(reason);
    ret->ptr = NULL;
    ret->len = 0;
}
