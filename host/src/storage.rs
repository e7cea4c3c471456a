//! Key-value stores for plugins (contract 0.2.0's `kv` interface): one per name a route grants
//! (`[routes.grants] kv = "NAME"`), shared by every instance and route that names it.
//!
//! A store is a redb database: the file `DATA_DIR/NAME.redb` (`data_dir` in the config), so its
//! data survives a restart, or, with `data_dir = "memory"`, a database in memory (for tests).
//! Reads go to the database as it is; a call's writes are kept by the call and committed together,
//! in one write transaction made durable before the call's actions are carried out
//! ([`Store::commit`]): a reply never announces data that a crash then loses, and a failed call
//! writes nothing. A compare-and-swap is checked when the call makes it and again in that
//! transaction, so two instances racing on one key cannot both win.
//!
//! Bounds: keys of at most [`MAX_KEY`] bytes, values of at most [`MAX_VALUE`] bytes, and a quota
//! per store (`kv_quota`, counting keys and values): a commit that would pass it is refused, and
//! the call fails (its connection is closed with 1011, and the instance rebuilt).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// The longest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// The largest value, in bytes.
pub const MAX_VALUE: usize = 64 << 10;

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// The page cache of one store (redb's default is 1 GiB per database): the server's memory for a
/// store is at most this, whatever its size on disk.
pub const CACHE_BYTES: usize = 16 << 20;

/// Where stores live: `data_dir` in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `DIR/NAME.redb`.
    Dir(PathBuf),
    /// In this process's memory only (`data_dir = "memory"`).
    Memory,
}

/// A store as a route names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    pub name: String,
    pub location: Location,
    /// Most bytes of keys and values together.
    pub quota: u64,
}

/// One write of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Set(String, Vec<u8>),
    Delete(String),
}

/// A key-value store (see the module documentation).
pub struct Store {
    pub name: String,
    db: Database,
    quota: u64,
    /// Bytes of keys and values stored, kept up to date by commits.
    used: Mutex<u64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("name", &self.name).finish()
    }
}

/// The open stores, by where they are: a database file can be opened once per process, so every
/// route naming it shares one handle.
fn registry() -> &'static Mutex<HashMap<String, Weak<Store>>> {
    static OPEN: OnceLock<Mutex<HashMap<String, Weak<Store>>>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// A store's name: letters, digits, `-` and `_`, 1 to 64 (it names a file).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("kv store name {name:?}: use 1 to 64 letters, digits, '-' or '_' (it names a file)"))
    }
}

impl Store {
    /// Opens (or creates) the store `spec` names, sharing the handle of one already open.
    pub fn open(spec: &StoreSpec) -> Result<Arc<Store>, String> {
        check_name(&spec.name)?;
        let key = match &spec.location {
            Location::Dir(dir) => dir.join(format!("{}.redb", spec.name)).display().to_string(),
            Location::Memory => format!("memory:{}", spec.name),
        };
        let mut open = registry().lock().expect("store registry lock");
        if let Some(store) = open.get(&key).and_then(Weak::upgrade) {
            return Ok(store);
        }
        let db = match &spec.location {
            Location::Dir(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("kv store {:?}: cannot create {}: {e}", spec.name, dir.display()))?;
                let path = dir.join(format!("{}.redb", spec.name));
                create(&path).map_err(|e| format!("kv store {:?}: cannot open {}: {e}", spec.name, path.display()))?
            }
            Location::Memory => Database::builder()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(|e| format!("kv store {:?} (in memory): {e}", spec.name))?,
        };
        let used = used_bytes(&db).map_err(|e| format!("kv store {:?}: {e}", spec.name))?;
        let store = Arc::new(Store { name: spec.name.clone(), db, quota: spec.quota, used: Mutex::new(used) });
        open.insert(key, Arc::downgrade(&store));
        Ok(store)
    }

    /// The value of `key`, as committed.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let read = self.db.begin_read().map_err(|e| self.failure(e))?;
        let table = match read.open_table(TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.failure(e)),
        };
        Ok(table.get(key).map_err(|e| self.failure(e))?.map(|v| v.value().to_vec()))
    }

    /// Up to `limit` committed keys that start with `prefix`, in order.
    pub fn keys(&self, prefix: &str, limit: usize) -> Result<Vec<String>, String> {
        let read = self.db.begin_read().map_err(|e| self.failure(e))?;
        let table = match read.open_table(TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.failure(e)),
        };
        let mut keys = Vec::new();
        for entry in table.range(prefix..).map_err(|e| self.failure(e))? {
            let (key, _) = entry.map_err(|e| self.failure(e))?;
            let key = key.value();
            if !key.starts_with(prefix) || keys.len() == limit {
                break;
            }
            keys.push(key.to_owned());
        }
        Ok(keys)
    }

    /// Most bytes of keys and values it may hold.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// Bytes of keys and values stored.
    pub fn used(&self) -> u64 {
        *self.used.lock().expect("store usage lock")
    }

    /// Commits one call's writes in one durable transaction, if every compare-and-swap it made
    /// still holds (`expected`: the value it saw, `None` for absent) and the quota allows.
    /// Blocking: file I/O and an fsync.
    pub fn commit(&self, writes: &[Write], expected: &[(String, Option<Vec<u8>>)]) -> Result<(), String> {
        let mut used = self.used.lock().expect("store usage lock");
        let txn = self.db.begin_write().map_err(|e| self.failure(e))?;
        let mut total = *used;
        {
            let mut table = txn.open_table(TABLE).map_err(|e| self.failure(e))?;
            for (key, value) in expected {
                let now = table.get(key.as_str()).map_err(|e| self.failure(e))?.map(|v| v.value().to_vec());
                if now != *value {
                    return Err(format!(
                        "kv store {:?}: the compare-and-swap of {key:?} lost a race with another instance",
                        self.name
                    ));
                }
            }
            for write in writes {
                let key = match write {
                    Write::Set(key, _) | Write::Delete(key) => key,
                };
                let old = table.remove(key.as_str()).map_err(|e| self.failure(e))?.map(|v| v.value().len());
                if let Some(old) = old {
                    total -= (key.len() + old) as u64;
                }
                if let Write::Set(key, value) = write {
                    table.insert(key.as_str(), value.as_slice()).map_err(|e| self.failure(e))?;
                    total += (key.len() + value.len()) as u64;
                }
            }
        }
        if total > self.quota && total > *used {
            // Dropped, not committed: the transaction aborts.
            return Err(format!(
                "kv store {:?} would hold {total} bytes, over its quota of {} (kv_quota)",
                self.name, self.quota
            ));
        }
        txn.commit().map_err(|e| self.failure(e))?;
        *used = total;
        Ok(())
    }

    fn failure(&self, e: impl std::fmt::Display) -> String {
        format!("kv store {:?}: {e}", self.name)
    }
}

/// Opens a database file. The last handle of a store that is being dropped (its route just
/// retired) may still hold the file's lock for the moment its drop takes: that is waited out, for
/// up to two seconds, rather than refused.
fn create(path: &Path) -> Result<Database, redb::DatabaseError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn used_bytes(db: &Database) -> Result<u64, String> {
    let read = db.begin_read().map_err(|e| e.to_string())?;
    let table = match read.open_table(TABLE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.to_string()),
    };
    let mut used = 0;
    for entry in table.iter().map_err(|e| e.to_string())? {
        let (k, v) = entry.map_err(|e| e.to_string())?;
        used += (k.value().len() + v.value().len()) as u64;
    }
    Ok(used)
}

/// The default data directory: `$WSPLUG_DATA_DIR`, else `$XDG_DATA_HOME/wsplug`, else
/// `~/.local/share/wsplug`, else `./wsplug-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WSPLUG_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return Path::new(&dir).join("wsplug");
    }
    match std::env::var_os("HOME") {
        Some(home) => Path::new(&home).join(".local/share/wsplug"),
        None => PathBuf::from("wsplug-data"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(name: &str, quota: u64) -> Arc<Store> {
        Store::open(&StoreSpec { name: name.into(), location: Location::Memory, quota }).unwrap()
    }

    #[test]
    fn writes_commit_together_and_keys_list_by_prefix() {
        let store = memory("unit-writes", 1 << 20);
        let writes = vec![
            Write::Set("room/a".into(), b"1".to_vec()),
            Write::Set("room/b".into(), b"22".to_vec()),
            Write::Set("other".into(), b"x".to_vec()),
        ];
        store.commit(&writes, &[]).unwrap();
        assert_eq!(store.get("room/b").unwrap(), Some(b"22".to_vec()));
        assert_eq!(store.keys("room/", 10).unwrap(), vec!["room/a", "room/b"]);
        assert_eq!(store.keys("room/", 1).unwrap(), vec!["room/a"]);
        assert_eq!(store.used(), 6 + 1 + 6 + 2 + 5 + 1);
        store.commit(&[Write::Delete("room/a".into())], &[]).unwrap();
        assert_eq!(store.get("room/a").unwrap(), None);
        assert_eq!(store.used(), 6 + 2 + 5 + 1);
        // The same name in the same place is the same store.
        assert_eq!(memory("unit-writes", 1 << 20).get("other").unwrap(), Some(b"x".to_vec()));
    }

    #[test]
    fn a_lost_race_or_the_quota_refuses_the_whole_commit() {
        let store = memory("unit-refusals", 100);
        store.commit(&[Write::Set("n".into(), b"1".to_vec())], &[]).unwrap();
        // A compare-and-swap that saw "0" lost to whoever wrote "1": nothing of the call is written.
        let e = store
            .commit(
                &[Write::Set("n".into(), b"2".to_vec()), Write::Set("m".into(), b"x".to_vec())],
                &[("n".into(), Some(b"0".to_vec()))],
            )
            .unwrap_err();
        assert!(e.contains("lost a race"), "{e}");
        assert_eq!((store.get("n").unwrap(), store.get("m").unwrap()), (Some(b"1".to_vec()), None));
        let e = store.commit(&[Write::Set("big".into(), vec![0; 200])], &[]).unwrap_err();
        assert!(e.contains("over its quota of 100"), "{e}");
        assert_eq!(store.get("big").unwrap(), None);
        // Freeing space is always allowed.
        store.commit(&[Write::Delete("n".into())], &[]).unwrap();
    }

    #[test]
    fn data_survives_reopening_the_file() {
        let dir = std::env::temp_dir().join(format!("wsplug-kv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spec = StoreSpec { name: "durable".into(), location: Location::Dir(dir.clone()), quota: 1 << 20 };
        {
            let store = Store::open(&spec).unwrap();
            store.commit(&[Write::Set("k".into(), b"v".to_vec())], &[]).unwrap();
        }
        let store = Store::open(&spec).unwrap();
        assert_eq!(store.get("k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(store.used(), 2);
        assert!(check_name("../x").is_err() && check_name("chat-data").is_ok());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
