//! What each host fuzz target checks (the targets in `fuzz_targets/` only call these).

use std::path::{Component, Path};

/// Fuzz target: a request path must resolve inside the static directory, or not at all.
pub fn static_path(data: &[u8]) {
    let Ok(url_path) = std::str::from_utf8(data) else { return };
    let dir = Path::new("/srv/static");
    if let Some(path) = wsplug::server::static_files::resolve(dir, url_path) {
        let rest = path.strip_prefix(dir).expect("a resolved path lies under the directory");
        for component in rest.components() {
            let Component::Normal(name) = component else { panic!("{url_path:?} → {path:?}: {component:?}") };
            let name = name.to_str().expect("decoded names are UTF-8");
            assert!(!name.starts_with('.') && !name.contains(['\\', '\0']), "{url_path:?} → {path:?}");
        }
    }
}

/// Fuzz target: any text as a config file is either refused with an error naming the file, or a
/// config that keeps the rules `check` promises.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match wsplug::config::Config::parse(text, "fuzz.toml", std::path::PathBuf::from("/etc/wsplug")) {
        Err(e) => assert!(e.to_string().starts_with("fuzz.toml"), "{e}"),
        Ok(c) => {
            let l = &c.limits;
            assert!(l.max_frame_size <= l.max_message_size && l.max_message_size > 0);
            assert!(!l.handshake_timeout.is_zero() && !l.idle_timeout.is_zero() && !l.close_timeout.is_zero());
            let mut paths = std::collections::HashSet::new();
            for route in &c.routes {
                let r = route.get_ref();
                assert!(r.path.starts_with('/') && !r.path.contains(['?', '#', ' ']), "{:?}", r.path);
                assert!(paths.insert(r.path.clone()), "route {:?} twice", r.path);
                assert!(r.kind.is_some() != r.plugin.is_some());
                assert!((1..=64).contains(&r.instances));
                assert!(!r.sandbox.cpu_deadline.is_zero() && r.sandbox.max_actions > 0);
            }
        }
    }
}

/// Fuzz target: a plugin call's result built from the bytes; the contract's checks never panic,
/// and what they let through keeps the rules the host relies on when it carries it out.
pub fn actions(data: &[u8]) {
    use wsplug::plugin::actions::{MAX_TOPIC, action_bytes, check_action, check_totals};
    use wsplug::plugin::bindings::v1::types::{Action, CloseFrame, MessageResult, Outgoing, Target};
    use wsplug::protocol::CloseCode;

    let limits = wsplug::plugin::sandbox::SandboxLimits { max_actions: 8, max_action_bytes: 600, ..Default::default() };
    let max_message = 300;
    let mut rest = data;
    let mut take = |n: usize| {
        let (head, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        head
    };
    let mut actions = Vec::new();
    while let [kind, len, ..] = *take(2) {
        let bytes = take(usize::from(len) * 3).to_vec();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let message = if kind & 0x10 == 0 { MessageResult::Text(text.clone()) } else { MessageResult::Binary(bytes) };
        actions.push(match kind % 7 {
            0 => Action::Reply(message),
            1 => Action::Broadcast(message),
            2 => Action::Send(Outgoing { to: Target::Topic(text), message }),
            3 => Action::Send(Outgoing { to: Target::Connection(u64::from(kind)), message }),
            4 => Action::Subscribe(text),
            5 => Action::Unsubscribe(text),
            _ => Action::Close(CloseFrame { code: u16::from_be_bytes([kind, len]), reason: text }),
        });
    }
    let count = usize::from(data.first().copied().unwrap_or(1) % 3) + 1;
    if check_totals(&actions, &limits, count).is_ok() {
        assert!(actions.len() <= limits.max_actions * count);
        assert!(actions.iter().map(action_bytes).sum::<usize>() <= limits.max_action_bytes * count);
    }
    for action in &actions {
        if check_action(action, max_message).is_err() {
            continue;
        }
        match action {
            Action::Reply(MessageResult::Text(t)) | Action::Broadcast(MessageResult::Text(t)) => {
                assert!(t.len() <= max_message)
            }
            Action::Subscribe(t) => assert!(t.len() <= MAX_TOPIC),
            Action::Close(f) => {
                assert!(CloseCode(f.code).is_allowed_on_wire());
                // What the host sends: a reason cut to fit a control frame, at a character boundary.
                let reason = wsplug::protocol::close::truncate_reason(&f.reason);
                assert!(reason.len() <= 123 && f.reason.starts_with(reason));
            }
            _ => {}
        }
    }
}

/// Fuzz target: a packed call result (`packed-batch.on-packed`) built from the bytes; the check
/// never panics, and what it lets through can be cut into its replies and merged with its actions
/// the way the host does it, within the limits.
pub fn packed(data: &[u8]) {
    use wsplug::plugin::actions::{TEXT_BIT, action_bytes, check_packed};
    use wsplug::plugin::bindings::v1::types::Action;
    use wsplug::plugin::instance::{PackedActions, PackedResult};

    let limits = wsplug::plugin::sandbox::SandboxLimits { max_actions: 8, max_action_bytes: 600, ..Default::default() };
    let Some((&head, rest)) = data.split_first() else { return };
    let (replies, actions) = (usize::from(head & 0x0f), usize::from(head >> 4));
    let mut words = rest.chunks_exact(2).map(|w| u16::from_le_bytes([w[0], w[1]]));
    let len = usize::from(words.next().unwrap_or(0) % 1024);
    let ends: Vec<u32> = (0..replies)
        .map_while(|_| words.next())
        .map(|w| u32::from(w & 0x7fff) | if w & 0x8000 != 0 { TEXT_BIT } else { 0 })
        .collect();
    let actions: Vec<(u32, Action)> = (0..actions)
        .map_while(|_| words.next())
        .map(|w| (u32::from(w % 20), Action::Subscribe("t".repeat(usize::from(w >> 12)))))
        .collect();
    let packed = PackedActions { replies: PackedResult { data: vec![b'x'; len], ends }, actions };
    let count = usize::from(head % 3) + 1;
    if check_packed(&packed, &limits, count).is_err() {
        return;
    }
    let (data, ends) = (&packed.replies.data, &packed.replies.ends);
    let mut start = 0;
    for end in ends {
        let end = (end & !TEXT_BIT) as usize;
        assert!(start <= end && end <= data.len(), "{start}..{end} of {}", data.len());
        start = end;
    }
    assert_eq!(start, data.len());
    assert!(packed.actions.windows(2).all(|w| w[0].0 <= w[1].0));
    assert!(packed.actions.iter().all(|(at, _)| *at as usize <= ends.len()));
    assert!(ends.len() + packed.actions.len() <= limits.max_actions * count);
    let bytes = data.len() + packed.actions.iter().map(|(_, a)| action_bytes(a)).sum::<usize>();
    assert!(bytes <= limits.max_action_bytes * count);
}
