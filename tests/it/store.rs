//! The token store against real redb files in temporary directories: round
//! trips, durability across a reopen and a simulated crash, refusal of corrupt
//! files, skipping of undecodable records, and the ordered writer.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, TableDefinition};
use wxtoken::domain::{AccessToken, AppId, Mode};
use wxtoken::metrics::Metrics;
use wxtoken::store::{
    MemoryStore, RedbStore, Storage, StoreError, StoreWriter, StoredAccount, StoredToken,
    move_aside,
};

use crate::support::metric_value;

/// The table the store module documents as its layout.
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");

fn appid(s: &str) -> AppId {
    AppId::parse(s).expect("test appid is valid")
}

fn legacy_with_token(id: &str, token: &str) -> StoredAccount {
    StoredAccount {
        appid: appid(id),
        mode: Mode::Legacy,
        token: Some(StoredToken {
            token: AccessToken::new(token),
            fetched_at_ms: 1_750_000_000_000,
            expires_at_ms: 1_750_007_200_000,
            serve_until_ms: 1_750_006_900_000,
        }),
        pending_fetch_ms: Some(1_750_006_000_000),
        calls_day: 20_254,
        calls_today: 7,
        forces: vec![],
        tickets: Vec::new(),
    }
}

fn stable_without_token(id: &str) -> StoredAccount {
    StoredAccount {
        appid: appid(id),
        mode: Mode::Stable,
        token: None,
        pending_fetch_ms: None,
        calls_day: 20_254,
        calls_today: 2,
        forces: vec![1_750_000_100_000, 1_750_000_200_000],
        tickets: Vec::new(),
    }
}

fn with_calls(mut account: StoredAccount, calls: u32) -> StoredAccount {
    account.calls_today = calls;
    account
}

/// The raw value stored under `key`, read with redb directly.
fn raw_record(path: &Path, key: &str) -> Option<Vec<u8>> {
    let db = Database::open(path).expect("the store file opens with redb");
    let txn = db.begin_read().expect("read transaction");
    let table = txn.open_table(ACCOUNTS).expect("the accounts table exists");
    table.get(key).expect("read").map(|v| v.value().to_vec())
}

#[test]
fn accounts_round_trip_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxtoken.redb");
    let a = legacy_with_token("wx1111111111111111", "TOKEN-A");
    let b = stable_without_token("wx2222222222222222");
    let c = legacy_with_token("wx3333333333333333", "TOKEN-C");

    let store = RedbStore::open(&path).unwrap();
    assert!(store.load_all().unwrap().is_empty());
    for account in [&c, &a, &b] {
        store.put(account).unwrap();
    }
    assert_eq!(
        store.load_all().unwrap(),
        vec![a.clone(), b.clone(), c.clone()]
    );
    drop(store);

    let reopened = RedbStore::open(&path).unwrap();
    assert_eq!(reopened.load_all().unwrap(), vec![a, b, c]);
}

#[test]
fn put_replaces_and_remove_removes_durably() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxtoken.redb");
    let a = legacy_with_token("wx1111111111111111", "TOKEN-A");
    let b = stable_without_token("wx2222222222222222");

    let store = RedbStore::open(&path).unwrap();
    store.put(&a).unwrap();
    store.put(&b).unwrap();
    let mut a2 = with_calls(a.clone(), 8);
    a2.pending_fetch_ms = None;
    a2.token = None;
    store.put(&a2).unwrap();
    store.remove(&b.appid).unwrap();
    store.remove(&b.appid).unwrap();
    store.remove(&appid("wx9999999999999999")).unwrap();
    assert_eq!(store.load_all().unwrap(), vec![a2.clone()]);
    drop(store);

    assert_eq!(
        RedbStore::open(&path).unwrap().load_all().unwrap(),
        vec![a2]
    );
}

#[test]
fn a_store_in_a_missing_nested_directory_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var/lib/wxtoken/wxtoken.redb");
    let store = RedbStore::open(&path).unwrap();
    store
        .put(&stable_without_token("wx1111111111111111"))
        .unwrap();
    assert!(path.is_file());
    assert_eq!(store.kind(), "redb");
    assert_eq!(store.describe(), format!("redb store {}", path.display()));
}

#[cfg(unix)]
#[test]
fn a_directory_that_cannot_be_created_is_an_open_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where a directory should be: create_dir_all fails for any user, root included.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let path = blocker.join("wxtoken.redb");
    let err = RedbStore::open(&path).err().expect("open fails");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

/// Asserts that opening `path` is refused as corrupt with a helpful message
/// and that the file is left exactly as it was.
fn assert_refused_as_corrupt(path: &Path) {
    let before = std::fs::read(path).unwrap();
    let err = RedbStore::open(path)
        .err()
        .expect("a corrupt file is refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("unreadable or corrupt"), "{text}");
    assert!(text.contains("--reset-store"), "{text}");
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "the refused file was modified"
    );
}

#[test]
fn a_text_file_is_refused_as_corrupt_and_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxtoken.redb");
    std::fs::write(&path, "accounts:\n  - appid: wx1111111111111111\n").unwrap();
    assert_refused_as_corrupt(&path);
}

#[test]
fn random_bytes_are_refused_as_corrupt_and_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxtoken.redb");
    let bytes: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, bytes).unwrap();
    assert_refused_as_corrupt(&path);
}

#[test]
fn a_truncated_store_is_refused_as_corrupt_and_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxtoken.redb");
    let store = RedbStore::open(&path).unwrap();
    store
        .put(&legacy_with_token("wx1111111111111111", "TOKEN-A"))
        .unwrap();
    drop(store);
    let full = std::fs::read(&path).unwrap();
    for len in [full.len() / 2, 700, 20] {
        std::fs::write(&path, &full[..len]).unwrap();
        assert_refused_as_corrupt(&path);
    }
}

#[test]
fn a_redb_file_of_another_program_is_refused_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxtoken.redb");
    {
        let foreign: TableDefinition<u64, u64> = TableDefinition::new("accounts");
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(foreign).unwrap().insert(1, 2).unwrap();
        txn.commit().unwrap();
    }
    let err = RedbStore::open(&path)
        .err()
        .expect("a foreign file is refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("--reset-store"), "{err}");
}

#[test]
fn a_store_open_twice_is_reported_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxtoken.redb");
    let _first = RedbStore::open(&path).unwrap();
    let err = RedbStore::open(&path).err().expect("second open fails");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn an_undecodable_record_is_skipped_and_kept_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxtoken.redb");
    let good = legacy_with_token("wx1111111111111111", "TOKEN-A");
    let store = RedbStore::open(&path).unwrap();
    store.put(&good).unwrap();
    drop(store);
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(ACCOUNTS).unwrap();
            table
                .insert("wx2222222222222222", &b"\x00\xffnot json"[..])
                .unwrap();
            table
                .insert("wx3333333333333333", &br#"{"v":99,"future":true}"#[..])
                .unwrap();
            table.insert("not/an/appid", &br#"{"v":1}"#[..]).unwrap();
        }
        txn.commit().unwrap();
    }

    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.load_all().unwrap(), vec![good]);
    drop(store);

    assert_eq!(
        raw_record(&path, "wx2222222222222222").as_deref(),
        Some(&b"\x00\xffnot json"[..])
    );
    assert!(raw_record(&path, "wx3333333333333333").is_some());
    assert!(raw_record(&path, "not/an/appid").is_some());
}

#[test]
fn records_are_versioned_json_keyed_by_appid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxtoken.redb");
    let store = RedbStore::open(&path).unwrap();
    store
        .put(&stable_without_token("wx1111111111111111"))
        .unwrap();
    drop(store);
    let raw = raw_record(&path, "wx1111111111111111").expect("record stored under its appid");
    let value: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(value["v"], 1);
    assert_eq!(value["mode"], "stable");
}

#[test]
fn move_aside_renames_the_store_and_frees_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxtoken.redb");
    std::fs::write(&path, "garbage").unwrap();
    let moved = move_aside(&path).unwrap();
    assert!(!path.exists());
    assert_eq!(std::fs::read(&moved).unwrap(), b"garbage");
    let name = moved.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("wxtoken.redb.broken-"), "{name}");
    assert_eq!(moved.parent(), path.parent());

    let store = RedbStore::open(&path).unwrap();
    assert!(store.load_all().unwrap().is_empty());
    assert!(move_aside(&dir.path().join("absent.redb")).is_err());
}

#[tokio::test]
async fn writer_applies_queued_writes_in_order_so_the_last_one_wins() {
    let store = Arc::new(MemoryStore::default());
    let writer = StoreWriter::start(store.clone(), Metrics::new());
    assert_eq!(writer.kind(), "memory");
    let a = stable_without_token("wx1111111111111111");
    let b = legacy_with_token("wx2222222222222222", "TOKEN-B");
    for calls in 0..200 {
        writer.put_later(with_calls(a.clone(), calls));
        writer.put_later(with_calls(b.clone(), calls));
    }
    writer.remove_later(b.appid.clone());
    writer.put_later(with_calls(b.clone(), 1_000));
    writer.remove_later(a.appid.clone());
    writer.flush().await;
    assert_eq!(store.load_all().unwrap(), vec![with_calls(b, 1_000)]);
}

#[tokio::test]
async fn writer_put_resolves_only_after_the_write_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxtoken.redb");
    let store = Arc::new(RedbStore::open(&path).unwrap());
    let writer = StoreWriter::start(store.clone(), Metrics::new());
    let a = legacy_with_token("wx1111111111111111", "TOKEN-A");
    for calls in 0..20 {
        writer.put_later(with_calls(a.clone(), calls));
    }
    writer.put(with_calls(a.clone(), 20)).await.unwrap();

    // Copying the file while the store is open is what a crash leaves behind
    // (kill -9, power loss): the copy must hold every acknowledged write.
    let crashed = dir.path().join("crashed.redb");
    std::fs::copy(&path, &crashed).unwrap();
    let recovered = RedbStore::open(&crashed).unwrap();
    assert_eq!(recovered.load_all().unwrap(), vec![with_calls(a, 20)]);
}

#[tokio::test]
async fn writer_flush_orders_writes_to_a_redb_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxtoken.redb");
    let store = Arc::new(RedbStore::open(&path).unwrap());
    let writer = StoreWriter::start(store.clone(), Metrics::new());
    let a = stable_without_token("wx1111111111111111");
    let b = stable_without_token("wx2222222222222222");
    for calls in 0..50 {
        writer.clone().put_later(with_calls(a.clone(), calls));
    }
    writer.put_later(b.clone());
    writer.remove_later(b.appid.clone());
    writer.flush().await;
    assert_eq!(store.load_all().unwrap(), vec![with_calls(a, 49)]);
}

/// A storage whose every write fails, as a full disk would.
struct FailingStore;

impl Storage for FailingStore {
    fn kind(&self) -> &'static str {
        "failing"
    }
    fn describe(&self) -> String {
        "failing test store".to_string()
    }
    fn load_all(&self) -> Result<Vec<StoredAccount>, StoreError> {
        Ok(Vec::new())
    }
    fn put(&self, account: &StoredAccount) -> Result<(), StoreError> {
        Err(StoreError::Write {
            store: self.describe(),
            appid: account.appid.to_string(),
            reason: "no space left on device".to_string(),
        })
    }
    fn remove(&self, appid: &AppId) -> Result<(), StoreError> {
        Err(StoreError::Write {
            store: self.describe(),
            appid: appid.to_string(),
            reason: "no space left on device".to_string(),
        })
    }
}

/// A storage that panics on every write.
struct PanickingStore;

impl Storage for PanickingStore {
    fn kind(&self) -> &'static str {
        "panicking"
    }
    fn describe(&self) -> String {
        "panicking test store".to_string()
    }
    fn load_all(&self) -> Result<Vec<StoredAccount>, StoreError> {
        Ok(Vec::new())
    }
    fn put(&self, _: &StoredAccount) -> Result<(), StoreError> {
        panic!("test store panics on put")
    }
    fn remove(&self, _: &AppId) -> Result<(), StoreError> {
        panic!("test store panics on remove")
    }
}

fn write_errors(metrics: &Metrics, store: &str) -> f64 {
    metric_value(
        &metrics.encode(),
        "wxtoken_store_write_errors_total",
        &[("store", store)],
    )
}

#[tokio::test]
async fn a_failed_write_is_returned_and_counted() {
    let metrics = Metrics::new();
    let writer = StoreWriter::start(Arc::new(FailingStore), metrics.clone());
    let err = writer
        .put(legacy_with_token("wx1111111111111111", "TOKEN-A"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Write { .. }), "{err:?}");
    assert!(!err.to_string().contains("TOKEN-A"), "{err}");
    assert_eq!(write_errors(&metrics, "failing"), 1.0);

    writer.put_later(stable_without_token("wx2222222222222222"));
    writer.remove_later(appid("wx3333333333333333"));
    writer.flush().await;
    assert_eq!(write_errors(&metrics, "failing"), 3.0);
}

#[tokio::test]
async fn a_panicking_store_gives_errors_and_the_writer_keeps_going() {
    let metrics = Metrics::new();
    let writer = StoreWriter::start(Arc::new(PanickingStore), metrics.clone());
    let account = stable_without_token("wx1111111111111111");
    assert!(writer.put(account.clone()).await.is_err());
    assert!(writer.put(account).await.is_err());
    assert_eq!(write_errors(&metrics, "panicking"), 2.0);
}

#[actix_web::test]
async fn the_writer_works_inside_an_actix_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(&dir.path().join("wxtoken.redb")).unwrap());
    let writer = StoreWriter::start(store.clone(), Metrics::new());
    let a = legacy_with_token("wx1111111111111111", "TOKEN-A");
    writer.put(a.clone()).await.unwrap();
    writer.flush().await;
    assert_eq!(store.load_all().unwrap(), vec![a]);
}

#[tokio::test(start_paused = true)]
async fn the_writer_works_under_a_paused_clock() {
    let store = Arc::new(MemoryStore::default());
    let writer = StoreWriter::start(store.clone(), Metrics::new());
    let a = stable_without_token("wx1111111111111111");
    writer.put(a.clone()).await.unwrap();
    tokio::time::advance(std::time::Duration::from_secs(3600)).await;
    writer.put_later(with_calls(a.clone(), 9));
    writer.flush().await;
    assert_eq!(store.load_all().unwrap(), vec![with_calls(a, 9)]);
}
