// The echo plugin in C: sends every message back to its sender, text as text and binary as
// binary. It admits every connection and picks no subprotocol.
//
// Ownership follows the canonical ABI as wit-bindgen's C generator lays it out: an export owns
// its arguments (free them with the generated `*_free` helpers, or hand them on), and what it
// returns must be heap memory, which the generated post-return function frees after the host has
// copied it.

#include <stdlib.h>

#include "plugin.h"

typedef exports_wsplug_plugin_handler_list_action_t action_list_t;

void exports_wsplug_plugin_handler_on_open(exports_wsplug_plugin_handler_connection_t *conn,
                                           exports_wsplug_plugin_handler_admission_t *ret) {
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
