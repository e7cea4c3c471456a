//! The contract's rules on what a plugin call returns, as pure functions: the limits on a call's
//! actions together ([`check_totals`]: the whole result is refused) and the rules each action must
//! follow ([`check_action`]: that action is skipped), and the shape of a packed result
//! ([`check_packed`]: the whole result is refused). `route.rs` carries out what passes; the fuzz
//! targets `actions` and `packed` (fuzz/host) check these rules against arbitrary results.

use super::bindings::v1::types::{self as wit, Action};
use super::instance::PackedActions;
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
    let message = |m: &wit::MessageResult| check_message_len(message_len(m), max_message_size);
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

/// The rule on a returned message's size: at most the route's `max_message_size`.
pub fn check_message_len(len: usize, max_message_size: usize) -> Result<(), String> {
    if len > max_message_size {
        return Err(format!("message of {len} bytes (limit {max_message_size})"));
    }
    Ok(())
}

/// Bit 31 of an end offset of `packed-batch`: the message is text.
pub const TEXT_BIT: u32 = 1 << 31;

/// The rules on a packed result (`packed-batch.on-packed`) for `count` events, beyond those of
/// each reply and action (checked as they are carried out, like a list's): the end offsets of the
/// replies never go back and the last is the end of their data; each action's count of replies
/// before it is at most the number of replies and never less than the one before it; and the
/// limits of [`check_totals`], every reply counted as an action.
pub fn check_packed(packed: &PackedActions, limits: &SandboxLimits, count: usize) -> Result<(), String> {
    let (data, ends) = (&packed.replies.data, &packed.replies.ends);
    let mut start = 0;
    for (i, end) in ends.iter().enumerate() {
        let end = (end & !TEXT_BIT) as usize;
        if end < start {
            return Err(format!("packed reply {i} ends at {end}, before it starts ({start})"));
        }
        start = end;
    }
    if start != data.len() {
        return Err(format!("packed replies end at {start}, their data holds {} bytes", data.len()));
    }
    let mut before = 0;
    for (i, (at, _)) in packed.actions.iter().enumerate() {
        if *at < before || *at as usize > ends.len() {
            return Err(format!(
                "packed action {i} placed after reply {at} (previous at {before}, {} replies)",
                ends.len()
            ));
        }
        before = *at;
    }
    let actions = ends.len() + packed.actions.len();
    let max_actions = limits.max_actions.saturating_mul(count);
    if actions > max_actions {
        return Err(format!("returned {actions} actions (limit {max_actions})"));
    }
    let bytes = data.len() + packed.actions.iter().map(|(_, a)| action_bytes(a)).sum::<usize>();
    let max_bytes = limits.max_action_bytes.saturating_mul(count);
    if bytes > max_bytes {
        return Err(format!("returned {bytes} message bytes (limit {max_bytes})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::instance::PackedResult;

    fn packed(data: &[u8], ends: &[u32], at: &[u32]) -> PackedActions {
        let actions = at.iter().map(|&i| (i, Action::Subscribe("t".into()))).collect();
        PackedActions { replies: PackedResult { data: data.to_vec(), ends: ends.to_vec() }, actions }
    }

    #[test]
    fn a_packed_result_must_be_well_formed_and_within_the_limits() {
        let limits = SandboxLimits { max_actions: 2, max_action_bytes: 10, ..Default::default() };
        // Two replies (the second text) and actions before, between and after them.
        assert_eq!(check_packed(&packed(b"abcd", &[1, 4 | TEXT_BIT], &[0, 1, 2]), &limits, 3), Ok(()));
        assert_eq!(check_packed(&packed(b"", &[], &[]), &limits, 1), Ok(()));
        let refused = |p: PackedActions, count: usize| check_packed(&p, &limits, count).unwrap_err();
        assert!(refused(packed(b"abcd", &[3, 2], &[]), 1).contains("before it starts"));
        assert!(refused(packed(b"abcd", &[1, 3], &[]), 1).contains("data holds 4 bytes"));
        assert!(refused(packed(b"abcd", &[5], &[]), 1).contains("end at 5"));
        assert!(refused(packed(b"ab", &[1, 2], &[2, 1]), 2).contains("placed after reply 1"));
        assert!(refused(packed(b"ab", &[1, 2], &[3]), 2).contains("placed after reply 3"));
        // Replies count as actions, their bytes as message bytes: the limits are per message.
        assert!(refused(packed(b"abc", &[1, 2, 3], &[]), 1).contains("3 actions (limit 2)"));
        assert!(refused(packed(&[0; 11], &[11], &[]), 1).contains("11 message bytes (limit 10)"));
        assert_eq!(check_packed(&packed(&[0; 11], &[11], &[]), &limits, 2), Ok(()));
    }
}
