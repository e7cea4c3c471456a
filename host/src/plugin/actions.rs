//! The contract's rules on what a plugin call returns, as pure functions: the limits on a call's
//! actions together ([`check_totals`]: the whole result is refused) and the rules each action must
//! follow ([`check_action`]: that action is skipped). `route.rs` carries out what passes; the fuzz
//! target `actions` (fuzz/host) checks these rules against arbitrary results.

use super::bindings::v1::types::{self as wit, Action};
use super::sandbox::SandboxLimits;
use crate::protocol::CloseCode;

/// The longest topic name, in bytes.
pub const MAX_TOPIC: usize = 256;

/// The message bytes an action carries (what `max_action_bytes` counts).
pub fn action_bytes(action: &Action) -> usize {
    match action {
        Action::Reply(m) | Action::Broadcast(m) => message_len(m),
        Action::Send(o) => message_len(&o.message),
        Action::Subscribe(t) | Action::Unsubscribe(t) => t.len(),
        Action::Close(f) => f.reason.len(),
    }
}

fn message_len(m: &wit::MessageResult) -> usize {
    match m {
        wit::MessageResult::Text(s) => s.len(),
        wit::MessageResult::Binary(b) => b.len(),
    }
}

/// The limits on one call's result for `count` events (the limits are per event): too many
/// actions or too many bytes refuse the whole result.
pub fn check_totals(actions: &[Action], limits: &SandboxLimits, count: usize) -> Result<(), String> {
    let max_actions = limits.max_actions.saturating_mul(count);
    if actions.len() > max_actions {
        return Err(format!("returned {} actions (limit {max_actions})", actions.len()));
    }
    let bytes: usize = actions.iter().map(action_bytes).sum();
    let max_bytes = limits.max_action_bytes.saturating_mul(count);
    if bytes > max_bytes {
        return Err(format!("returned {bytes} message bytes (limit {max_bytes})"));
    }
    Ok(())
}

/// The rules one action must follow; `max_message_size` bounds a message it sends.
pub fn check_action(action: &Action, max_message_size: usize) -> Result<(), String> {
    let message = |m: &wit::MessageResult| {
        let len = message_len(m);
        if len > max_message_size {
            return Err(format!("message of {len} bytes (limit {max_message_size})"));
        }
        Ok(())
    };
    let topic = |t: &str| {
        if t.len() > MAX_TOPIC {
            return Err(format!("topic name of {} bytes (limit {MAX_TOPIC})", t.len()));
        }
        Ok(())
    };
    match action {
        Action::Reply(m) | Action::Broadcast(m) => message(m),
        // Publishing to a topic longer than any can be reaches nobody, like any unknown topic.
        Action::Send(o) => message(&o.message),
        Action::Subscribe(t) => topic(t),
        // Leaving a topic one is not in is harmless, whatever its name.
        Action::Unsubscribe(_) => Ok(()),
        Action::Close(frame) => {
            if !CloseCode(frame.code).is_allowed_on_wire() {
                return Err(format!("close with code {} (not allowed on the wire)", frame.code));
            }
            Ok(())
        }
    }
}
