//! `wsplug test PLUGIN.wasm SCRIPT`: a scripted conversation with a plugin, without a server.
//!
//! The script is plain text, one step a line, each followed by the lines its step must produce
//! (`> ...`). Blank lines and `#` comments are ignored.
//!
//! ```text
//! # connection 1 opens (path with query; then any of: protocol NAME, header "NAME: VALUE")
//! open 1 /chat?nick=ada protocol chat.v1
//! > accept protocol "chat.v1"
//! > subscribe "lobby"
//! > reply json {"type":"welcome","nick":"ada"}
//! text 1 hello world            # the rest of the line; "a JSON string" for spaces or escapes
//! > send topic "lobby" text "ada: hello world"
//! binary 1 00ff                 # hex
//! > reply binary 00ff
//! close 1 1000 bye              # code and reason optional (1005, "")
//! reload next.wasm              # another file (relative to the script): state handed over,
//! > conn 1: accept              #   open connections re-attached (on-open, resumed)
//! timer tick                    # the timer `tick` fires (contract 0.2.0)
//! > broadcast text "tick"
//! ```
//!
//! What a step does with timers, attachments and the key-value store (contract 0.2.0) is shown
//! after its actions: `kv set "KEY" (N bytes)`, `kv delete "KEY"`, `timer set "NAME" after N ms
//! [every N ms]`, `timer cancel "NAME"`, `attach ID "VALUE"`. The store is a fresh one in memory
//! for each run. Timers
//! fire only when a `timer NAME` step says so (`no timer "NAME" is set` if it is not); a one-shot
//! timer is gone once fired.
//!
//! What a step produces, one line each, in order: for `open`, the admission (`accept`,
//! `accept protocol "P"` or `reject STATUS "BODY"`) then its actions; for `text`, `binary` and
//! `close`, the actions: `reply M`, `broadcast M`, `send TARGET M` (TARGET: `sender`,
//! `connection N`, `everyone`, `others`, `topic "T"`), `subscribe "T"`, `unsubscribe "T"`,
//! `close CODE "REASON"`, where M is `text "..."`, `json {...}` (a text that is a JSON object or
//! array, compared as JSON) or `binary HEX` (`binary (empty)`). An action the server would refuse is followed by
//! `(refused: WHY)`; a whole result it would refuse is `refused: WHY`. A failed call is
//! `failed: WHY`: as in the server, its connection is closed, the instance rebuilt from the state
//! last handed over and the others re-attached (`conn N: ...` lines). An expected line ending in
//! `...` matches any line that starts with what comes before.
//!
//! Every step's lines are compared with its `>` lines (none: it must produce nothing). The run
//! prints each step and what it produced; on a difference it prints the step's expected (`-`)
//! and actual (`+`) lines, and fails. `--bless` writes the actual lines into the script instead.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::bindings::v1::types::{Action, Admission, Connection, MessageParam, MessageResult, Target};
use super::instance::{CallError, PluginInstance};
use super::platform::{Grants, Shared, quoted};
use super::{LoadedPlugin, PluginEngine, SandboxLimits, actions};

/// One step of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Open { id: u64, path: String, protocols: Vec<String>, headers: Vec<(String, String)> },
    Text { id: u64, text: String },
    Binary { id: u64, bytes: Vec<u8> },
    Close { id: u64, code: u16, reason: String },
    Reload { file: PathBuf },
    Timer { name: String },
}

/// A step, where it is, and what it must produce.
#[derive(Debug)]
struct Scripted {
    line: usize,
    source: String,
    step: Step,
    expected: Vec<String>,
}

/// The outcome of a run.
pub struct Outcome {
    /// What the run printed: every step and its lines, and the differences.
    pub report: String,
    pub steps: usize,
    pub failed: usize,
}

/// Runs `script` against `plugin`; with `bless`, rewrites the script's expectations instead of
/// comparing them.
pub fn run(plugin: &Path, script: &Path, bless: bool) -> Result<Outcome> {
    let text = std::fs::read_to_string(script).with_context(|| format!("reading {}", script.display()))?;
    let base = script.parent().unwrap_or(Path::new("."));
    let steps = parse(&text, base).with_context(|| format!("in {}", script.display()))?;
    let cache = super::engine::default_cache_dir();
    let loaded = PluginEngine::global().load(plugin, cache.as_deref())?;
    let played = wasmtime_wasi::runtime::in_tokio(Runner::new(loaded, cache).play(&steps))?;
    if bless {
        std::fs::write(script, blessed(&text, &steps, &played.actual))
            .with_context(|| format!("writing {}", script.display()))?;
    }
    let mut report = String::new();
    let mut failed = 0;
    for (scripted, actual) in steps.iter().zip(&played.actual) {
        let _ = writeln!(report, "{}", scripted.source);
        for line in actual {
            let _ = writeln!(report, "  {line}");
        }
        if !bless && !matches(&scripted.expected, actual) {
            failed += 1;
            let _ = writeln!(report, "  ^ differs from the script (line {}):", scripted.line);
            for line in &scripted.expected {
                let _ = writeln!(report, "  - {line}");
            }
            for line in actual {
                let _ = writeln!(report, "  + {line}");
            }
        }
    }
    Ok(Outcome { report, steps: steps.len(), failed })
}

fn parse(text: &str, base: &Path) -> Result<Vec<Scripted>> {
    let mut steps: Vec<Scripted> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let trimmed = raw.trim();
        if let Some(expected) = trimmed.strip_prefix('>') {
            let Some(step) = steps.last_mut() else { bail!("line {line}: an expected line (>) before any step") };
            step.expected.push(expected.trim().to_owned());
            continue;
        }
        let content = strip_comment(trimmed);
        if content.is_empty() {
            continue;
        }
        let step = parse_step(content, base).with_context(|| format!("line {line}: {content:?}"))?;
        steps.push(Scripted { line, source: content.to_owned(), step, expected: Vec::new() });
    }
    Ok(steps)
}

/// A `#` outside a quoted string starts a comment.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '#' if !quoted => return line[..i].trim_end(),
            _ => {}
        }
    }
    line
}

fn parse_step(line: &str, base: &Path) -> Result<Step> {
    let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim_start();
    let id = |rest: &str| -> Result<(u64, String)> {
        let (id, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let id = id.parse().with_context(|| format!("{id:?} is not a connection id (a number)"))?;
        Ok((id, tail.trim_start().to_owned()))
    };
    Ok(match verb {
        "open" => {
            let (id, tail) = id(rest)?;
            let mut words = Words(&tail);
            let path = words.next()?.context("open needs a path, e.g. open 1 /chat?nick=ada")?;
            let (mut protocols, mut headers) = (Vec::new(), Vec::new());
            while let Some(option) = words.next()? {
                let value = words.next()?.with_context(|| format!("{option} needs a value"))?;
                match option.as_str() {
                    "protocol" => protocols.push(value),
                    "header" => {
                        let (name, value) = value
                            .split_once(':')
                            .with_context(|| format!("header {value:?} is not \"NAME: VALUE\""))?;
                        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
                    }
                    other => bail!("unknown option {other:?} of open (protocol NAME, header \"NAME: VALUE\")"),
                }
            }
            Step::Open { id, path, protocols, headers }
        }
        "text" => {
            let (id, tail) = id(rest)?;
            let text =
                if tail.starts_with('"') { serde_json::from_str(&tail).context("a bad quoted string")? } else { tail };
            Step::Text { id, text }
        }
        "binary" => {
            let (id, tail) = id(rest)?;
            Step::Binary { id, bytes: from_hex(&tail)? }
        }
        "close" => {
            let (id, tail) = id(rest)?;
            let (code, reason) = tail.split_once(char::is_whitespace).unwrap_or((&tail, ""));
            let code = if code.is_empty() {
                1005
            } else {
                code.parse().with_context(|| format!("{code:?} is not a close code"))?
            };
            let reason = reason.trim();
            let reason = if reason.starts_with('"') {
                serde_json::from_str(reason).context("a bad quoted string")?
            } else {
                reason.to_owned()
            };
            Step::Close { id, code, reason }
        }
        "timer" => {
            let name = if rest.starts_with('"') {
                serde_json::from_str(rest).context("a bad quoted string")?
            } else {
                rest.to_owned()
            };
            if name.is_empty() {
                bail!("timer needs a name, e.g. timer tick");
            }
            Step::Timer { name }
        }
        "reload" => {
            if rest.is_empty() {
                bail!("reload needs a file, e.g. reload next.wasm");
            }
            Step::Reload { file: base.join(rest) }
        }
        other => bail!("unknown step {other:?}: open, text, binary, close, timer or reload"),
    })
}

/// Whitespace-separated words, a word in double quotes being a JSON string.
struct Words<'a>(&'a str);

impl Words<'_> {
    fn next(&mut self) -> Result<Option<String>> {
        let s = self.0.trim_start();
        if s.is_empty() {
            return Ok(None);
        }
        if s.starts_with('"') {
            let mut de = serde_json::Deserializer::from_str(s).into_iter::<String>();
            let word = de.next().context("an unterminated quoted string")?.context("a bad quoted string")?;
            self.0 = &s[de.byte_offset()..];
            return Ok(Some(word));
        }
        let end = s.find(char::is_whitespace).unwrap_or(s.len());
        self.0 = &s[end..];
        Ok(Some(s[..end].to_owned()))
    }
}

fn from_hex(s: &str) -> Result<Vec<u8>> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        bail!("{s:?} is not hex bytes (an even number of hex digits)");
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).with_context(|| format!("{s:?} is not hex bytes")))
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Plays the steps against one instance, as the server would.
struct Runner {
    plugin: LoadedPlugin,
    cache: Option<PathBuf>,
    limits: SandboxLimits,
    instance: Option<PluginInstance>,
    /// The open connections and what they opened with.
    open: BTreeMap<u64, Step>,
    /// The state last handed over (after each successful step), for a rebuild after a failure.
    checkpoint: Vec<u8>,
    /// The instance's timers and attachments, which outlive it (as a route slot's do).
    platform: Shared,
}

struct Played {
    actual: Vec<Vec<String>>,
}

impl Runner {
    fn new(plugin: LoadedPlugin, cache: Option<PathBuf>) -> Self {
        Self {
            plugin,
            cache,
            limits: SandboxLimits::default(),
            instance: None,
            open: BTreeMap::new(),
            checkpoint: Vec::new(),
            platform: Shared { kv: test_store(), ..Shared::default() },
        }
    }

    /// A new instance of `plugin`, linked to the timers and attachments, its uses logged.
    async fn instantiate(&self, plugin: &LoadedPlugin) -> Result<PluginInstance> {
        let mut instance = PluginInstance::new(plugin, &self.limits)
            .await
            .map_err(|e| anyhow::anyhow!("plugin {}: instantiation {e}", plugin.path.display()))?;
        instance.link_platform(self.platform.clone(), Grants::default().max_timers);
        instance.keep_platform_log();
        Ok(instance)
    }

    async fn play(mut self, steps: &[Scripted]) -> Result<Played> {
        self.instance = Some(self.instantiate(&self.plugin).await?);
        let mut actual = Vec::new();
        for scripted in steps {
            actual.push(self.step(&scripted.step).await?);
        }
        Ok(Played { actual })
    }

    fn instance(&mut self) -> &mut PluginInstance {
        self.instance.as_mut().expect("an instance between steps")
    }

    async fn step(&mut self, step: &Step) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let result = match step {
            Step::Open { id, .. } => {
                let admission = open_step(self.instance(), step, false).await;
                let mut attachments = self.platform.attachments.lock().expect("attachments lock");
                if let Ok(Admission::Accept(_)) = &admission {
                    self.open.insert(*id, step.clone());
                    attachments.entry(*id).or_default();
                } else {
                    attachments.remove(id);
                }
                drop(attachments);
                admission.map(|a| admission_lines(&a, &mut out))
            }
            Step::Text { id, text } => {
                self.instance().on_message(*id, MessageParam::Text(text)).await.map(|a| action_lines(&a, &mut out))
            }
            Step::Binary { id, bytes } => {
                self.instance().on_message(*id, MessageParam::Binary(bytes)).await.map(|a| action_lines(&a, &mut out))
            }
            Step::Close { id, code, reason } => {
                self.open.remove(id);
                let r = self.instance().on_close(*id, *code, reason).await.map(|a| action_lines(&a, &mut out));
                self.platform.attachments.lock().expect("attachments lock").remove(id);
                r
            }
            Step::Timer { name } => {
                let timer = self.platform.timers.lock().expect("timers lock").get(name).copied();
                match timer {
                    None => {
                        out.push(format!("no timer {} is set", quoted(name)));
                        Ok(())
                    }
                    Some(timer) => {
                        if timer.every.is_none() {
                            self.platform.timers.lock().expect("timers lock").remove(name);
                        }
                        self.instance().on_timer(name).await.map(|a| action_lines(&a, &mut out))
                    }
                }
            }
            Step::Reload { file } => {
                let next = PluginEngine::global().load(file, self.cache.as_deref())?;
                let snapshot = self.instance().snapshot().await.map_err(|e| anyhow::anyhow!("snapshot {e}"))?;
                let mut instance = self.instantiate(&next).await?;
                match instance.restore(snapshot).await {
                    Ok(Ok(())) => {}
                    Ok(Err(why)) => {
                        out.push(format!("refused: the new version refused the state: {why}"));
                        return Ok(out);
                    }
                    Err(e) => {
                        out.push(format!("refused: restore {e}"));
                        return Ok(out);
                    }
                }
                self.plugin = next;
                self.instance = Some(instance);
                self.reattach(&mut out).await;
                Ok(())
            }
        };
        out.extend(self.instance().take_platform_log());
        match result {
            Ok(()) => {
                if self.instance().has_snapshot() {
                    self.checkpoint = self.instance().snapshot().await.unwrap_or_default();
                }
            }
            Err(e) => {
                out.push(format!("failed: {}", failure(&e)));
                if let Step::Open { id, .. } | Step::Text { id, .. } | Step::Binary { id, .. } = step {
                    self.open.remove(id); // closed with 1011 by the server
                }
                self.rebuild(&mut out).await?;
            }
        }
        Ok(out)
    }

    /// After a failure: a fresh instance from the last checkpoint, the other connections
    /// re-attached.
    async fn rebuild(&mut self, out: &mut Vec<String>) -> Result<()> {
        let mut instance = self.instantiate(&self.plugin.clone()).await?;
        match instance.restore(self.checkpoint.clone()).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => out.push(format!("rebuilt without its state: {why}")),
            Err(e) => out.push(format!("rebuilt without its state: restore {}", failure(&e))),
        }
        self.instance = Some(instance);
        self.reattach(out).await;
        out.extend(self.instance().take_platform_log());
        Ok(())
    }

    /// Every open connection, re-attached with on-open (resumed), its lines prefixed.
    async fn reattach(&mut self, out: &mut Vec<String>) {
        let open: Vec<(u64, Step)> = self.open.iter().map(|(id, s)| (*id, s.clone())).collect();
        for (id, step) in open {
            let mut lines = Vec::new();
            match open_step(self.instance(), &step, true).await {
                Ok(admission) => admission_lines(&admission, &mut lines),
                Err(e) => lines.push(format!("failed: {}", failure(&e))),
            }
            out.extend(lines.into_iter().map(|l| format!("conn {id}: {l}")));
        }
    }
}

async fn open_step(instance: &mut PluginInstance, step: &Step, resumed: bool) -> Result<Admission, CallError> {
    let Step::Open { id, path, protocols, headers } = step else { unreachable!("only open steps open") };
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let protocols: Vec<&str> = protocols.iter().map(String::as_str).collect();
    let conn =
        Connection { id: *id, path, headers: &headers, remote_addr: "127.0.0.1:1", protocols: &protocols, resumed };
    instance.on_open(conn).await
}

/// A key-value store of its own for one run: in memory, empty, with the default quota.
fn test_store() -> Option<std::sync::Arc<crate::storage::Store>> {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let spec = crate::storage::StoreSpec {
        name: format!("wsplug-test-{}-{n}", std::process::id()),
        location: crate::storage::Location::Memory,
        quota: Grants::default().kv_quota as u64,
    };
    crate::storage::Store::open(&spec).ok()
}

/// A failure as the client of a `dev` route would read it: what failed, and the plugin's words.
fn failure(e: &CallError) -> String {
    let text = e.to_string();
    match text.split_once(super::instance::STDERR_MARK) {
        Some((what, said)) => format!("{what}: {}", super::instance::telling_line(said)),
        None => text,
    }
}

fn admission_lines(admission: &Admission, out: &mut Vec<String>) {
    match admission {
        Admission::Accept(a) => {
            out.push(match &a.subprotocol {
                Some(p) => format!("accept protocol {}", quoted(p)),
                None => "accept".to_owned(),
            });
            action_lines(&a.actions, out);
        }
        Admission::Reject(r) => out.push(format!("reject {} {}", r.status, quoted(&r.body))),
    }
}

fn action_lines(list: &[Action], out: &mut Vec<String>) {
    if let Err(why) = actions::check_totals(list, &SandboxLimits::default(), 1) {
        out.push(format!("refused: {why}"));
        return;
    }
    for action in list {
        let mut line = match action {
            Action::Reply(m) => format!("reply {}", message(m)),
            Action::Broadcast(m) => format!("broadcast {}", message(m)),
            Action::Send(o) => format!("send {} {}", target(&o.to), message(&o.message)),
            Action::Subscribe(t) => format!("subscribe {}", quoted(t)),
            Action::Unsubscribe(t) => format!("unsubscribe {}", quoted(t)),
            Action::Close(f) => format!("close {} {}", f.code, quoted(&f.reason)),
        };
        if let Err(why) = actions::check_action(action, crate::config::Limits::default().max_message_size) {
            let _ = write!(line, " (refused: {why})");
        }
        out.push(line);
    }
}

fn message(m: &MessageResult) -> String {
    match m {
        MessageResult::Text(t) => match serde_json::from_str::<serde_json::Value>(t) {
            Ok(v @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => format!("json {v}"),
            _ => format!("text {}", quoted(t)),
        },
        MessageResult::Binary(b) if b.is_empty() => "binary (empty)".to_owned(),
        MessageResult::Binary(b) => format!("binary {}", to_hex(b)),
    }
}

fn target(t: &Target) -> String {
    match t {
        Target::Sender => "sender".into(),
        Target::Connection(id) => format!("connection {id}"),
        Target::Everyone => "everyone".into(),
        Target::Others => "others".into(),
        Target::Topic(name) => format!("topic {}", quoted(name)),
    }
}

/// An expected line in the form it is compared in: a `json` message re-serialised, so that key
/// order and spacing do not matter.
fn normalise(line: &str) -> String {
    if let Some(at) = line.find("json ").filter(|&at| at == 0 || line[..at].ends_with(' '))
        && let Ok(value) = serde_json::from_str::<serde_json::Value>(&line[at + 5..])
    {
        return format!("{}json {value}", &line[..at]);
    }
    line.to_owned()
}

fn matches(expected: &[String], actual: &[String]) -> bool {
    expected.len() == actual.len()
        && expected.iter().zip(actual).all(|(e, a)| match e.strip_suffix("...") {
            Some(prefix) => a.starts_with(prefix),
            None => normalise(e) == *a,
        })
}

/// The script with every step's `>` lines replaced by what it produced.
fn blessed(text: &str, steps: &[Scripted], actual: &[Vec<String>]) -> String {
    let mut by_line: BTreeMap<usize, &Vec<String>> = BTreeMap::new();
    for (scripted, lines) in steps.iter().zip(actual) {
        by_line.insert(scripted.line, lines);
    }
    let mut out = String::new();
    for (n, raw) in text.lines().enumerate() {
        if raw.trim_start().starts_with('>') {
            continue;
        }
        out.push_str(raw);
        out.push('\n');
        if let Some(lines) = by_line.get(&(n + 1)) {
            let indent: String = raw.chars().take_while(|c| c.is_whitespace()).collect();
            for line in *lines {
                let _ = writeln!(out, "{indent}> {line}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_with_quotes_options_and_comments() {
        let steps = parse(
            "# a comment\nopen 7 /chat?nick=ada protocol chat.v1 header \"Origin: x\"\n> accept\n\n\
             text 7 hello # not part of it\ntext 7 \"  two # words  \"\nbinary 7 00 ff\nclose 7\nclose 7 4000 \"gone away\"\n",
            Path::new("/s"),
        )
        .unwrap();
        assert_eq!(
            steps[0].step,
            Step::Open {
                id: 7,
                path: "/chat?nick=ada".into(),
                protocols: vec!["chat.v1".into()],
                headers: vec![("origin".into(), "x".into())]
            }
        );
        assert_eq!(steps[0].expected, vec!["accept"]);
        assert_eq!(steps[1].step, Step::Text { id: 7, text: "hello".into() });
        assert_eq!(steps[2].step, Step::Text { id: 7, text: "  two # words  ".into() });
        assert_eq!(steps[3].step, Step::Binary { id: 7, bytes: vec![0, 255] });
        assert_eq!(steps[4].step, Step::Close { id: 7, code: 1005, reason: String::new() });
        assert_eq!(steps[5].step, Step::Close { id: 7, code: 4000, reason: "gone away".into() });
    }

    #[test]
    fn a_bad_script_is_refused_with_its_line() {
        for (script, says) in [
            ("> accept", "before any step"),
            ("open x /p", "not a connection id"),
            ("open 1", "needs a path"),
            ("open 1 /p flavour vanilla", "unknown option"),
            ("binary 1 0f0", "even number"),
            ("dance 1", "unknown step"),
        ] {
            let e = format!("{:#}", parse(script, Path::new("/s")).unwrap_err());
            assert!(e.contains("line 1") && e.contains(says), "{script}: {e}");
        }
    }

    #[test]
    fn expectations_compare_json_as_json_and_prefixes_with_dots() {
        let actual = vec!["reply json {\"a\":1,\"b\":[2]}".to_owned(), "failed: trapped: boom at x".to_owned()];
        assert!(matches(&["reply json { \"b\": [2], \"a\": 1 }".into(), "failed: trapped: boom...".into()], &actual));
        assert!(!matches(&["reply json {\"a\":2,\"b\":[2]}".into(), "failed: trapped: boom...".into()], &actual));
        assert!(!matches(&["reply json {\"a\":1,\"b\":[2]}".into()], &actual), "a missing line differs");
    }

    #[test]
    fn bless_writes_what_each_step_produced() {
        let text = "open 1 /x\n> old\ntext 1 hi\n";
        let steps = parse(text, Path::new("/s")).unwrap();
        let actual = vec![vec!["accept".to_owned()], vec!["reply text \"HI\"".to_owned()]];
        assert_eq!(blessed(text, &steps, &actual), "open 1 /x\n> accept\ntext 1 hi\n> reply text \"HI\"\n");
    }
}
